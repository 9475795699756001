//! `reporter`: the command-line face of usage-reporter. See `reporter --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use usage_reporter::cli::{Cli, Command, RunArgs, ShowArgs, ShowCommand};
use usage_reporter::lease::{LeaseRecord, LeaseView, LEASE_KEY};
use usage_reporter::replica::{Options, ReplicaBuilder, StartError};
use usage_reporter::seed::{ReadOutcome, SeedKeeper};
use usage_reporter::store::{self, Store, StoreError};
use usage_reporter::{timefmt, BuildInfo};

/// A failure: the message is printed on one line, the code is the exit status.
struct Failure(u8, String);

/// Parses the command line; help and version print as usual, errors as one line, status 2.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("reporter: {first} (see reporter --help)");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // `run` logs what it does; the show commands print their answer and stay quiet. The
    // object store client's own retry chatter is left out either way.
    let default_filter = match cli.command {
        Command::Run(_) => "info,object_store=warn",
        _ => "warn,object_store=error",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reporter: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Seed {
                command: ShowCommand::Show(args),
            } => seed_show(args).await,
            Command::Lease {
                command: ShowCommand::Show(args),
            } => lease_show(args).await,
        }
    });
    // Do not wait for blocked store calls of a store that does not answer.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("reporter: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: Box<RunArgs>) -> Result<(), Failure> {
    let args = *args;
    let options = Options {
        store: args.store.store,
        store_options: args.store.store_options,
        listen: args.listen,
        target: args.target,
        stats_url: args.stats_url,
        interval: args.interval,
        lease_ttl: args.lease_ttl,
        collect_delay: args.collect_delay,
        metrics: args.metrics,
        seed_name: args.store.seed_name,
        reporting_enabled: args.reporting_enabled,
        seed_check: args.seed_check,
        max_report_age: args.max_report_age,
        retention: args.retention,
        post_timeout: args.post_timeout,
        ..Options::default()
    };
    let mut replica = ReplicaBuilder::from_options(options)
        .start()
        .await
        .map_err(|e| match e {
            StartError::Config(m) => Failure(2, m),
            other => Failure(1, other.to_string()),
        })?;
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        reason = replica.failed() => Err(Failure(1, reason)),
    };
    tracing::info!("shutting down");
    replica.shutdown().await;
    outcome
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_store(args: &ShowArgs) -> Result<Store, Failure> {
    store::open(&args.store.store, &args.store.store_options).map_err(|e| Failure(2, e.to_string()))
}

/// One object read with a few retries for passing failures.
async fn read_with_retries<T>(
    mut read: impl AsyncFnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(v) => return Ok(v),
            Err(e @ (StoreError::PermissionDenied { .. } | StoreError::NotSupported { .. })) => {
                return Err(e)
            }
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
        }
    }
}

async fn seed_show(args: ShowArgs) -> Result<(), Failure> {
    let store = open_store(&args)?;
    let where_ = format!("{}/{}", store.describe(), args.store.seed_name);
    let keeper = SeedKeeper::new(store, args.store.seed_name.clone(), BuildInfo::reporter());
    let outcome = read_with_retries(async || keeper.read().await)
        .await
        .map_err(|e| Failure(1, format!("cannot read the cluster seed: {e}")))?;
    let seed = match outcome {
        ReadOutcome::Valid(seed) => seed,
        ReadOutcome::Absent => return Err(Failure(1, format!("no cluster seed at {where_}"))),
        ReadOutcome::Corrupted(why) => {
            return Err(Failure(
                1,
                format!("the cluster seed at {where_} is corrupted: {why}"),
            ))
        }
    };
    let created = timefmt::rfc3339_nano(&seed.created_at());
    let age = (chrono::Utc::now() - seed.created_at().to_utc())
        .to_std()
        .unwrap_or_default();
    if args.json {
        let v = serde_json::json!({
            "clusterID": seed.uid(),
            "createdAt": created,
            "ageSeconds": age.as_secs(),
            "version": seed.version(),
        });
        println!("{v}");
    } else {
        println!("clusterID: {}", seed.uid());
        println!(
            "createdAt: {created} ({} ago)",
            timefmt::format_duration(
                Duration::from_secs(age.as_secs()).max(Duration::from_millis(0))
            )
        );
        match seed.version() {
            Some(v) => println!("version:   {v}"),
            None => println!("version:   (none)"),
        }
    }
    Ok(())
}

async fn lease_show(args: ShowArgs) -> Result<(), Failure> {
    let store = open_store(&args)?;
    let where_ = format!("{}/{LEASE_KEY}", store.describe());
    let obj = match read_with_retries(async || store.get(LEASE_KEY).await).await {
        Ok(obj) => obj,
        Err(StoreError::NotFound { .. }) => {
            return Err(Failure(1, format!("no leader lease at {where_}")))
        }
        Err(e) => return Err(Failure(1, format!("cannot read the leader lease: {e}"))),
    };
    let record = LeaseRecord::parse(&obj.bytes)
        .ok_or_else(|| Failure(1, format!("the leader lease at {where_} is corrupted")))?;
    let view = LeaseView::of(&record);
    if args.json {
        println!("{}", serde_json::to_string(&view).unwrap_or_default());
    } else {
        let holder = if view.released {
            "(released)".to_string()
        } else {
            view.holder.clone()
        };
        println!("holder:     {holder}");
        println!("term:       {}", view.term);
        println!("acquired:   {}", view.acquired_at);
        println!("renewed:    {}", view.renewed_at);
        println!(
            "ttl:        {}",
            timefmt::format_duration(Duration::from_millis(view.ttl_ms))
        );
        println!(
            "expired:    {}",
            if view.looks_expired {
                "yes (by the holder's clock)"
            } else {
                "no"
            }
        );
    }
    Ok(())
}
