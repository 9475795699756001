//! What each command does: a thin wrapper over the library (or the receiver), its failures
//! turned into one line and an exit status.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use usage_reporter_receiver::{self as receiver, forget, By, ReceiveError, Receiver};

use super::args::{
    self as cli, Cli, Command, ForgetArgs, LeaseCommand, LeaseShowArgs, LogFormat, ReceiveArgs,
    RollupArgs, RunArgs, SeedCommand, SeedShowArgs, StoreArgs,
};
use super::inspect;
use crate::replica::{Options, ReplicaBuilder};
use crate::store::{self, Store};

/// A failure: the message is printed on one line, the code is the exit status.
struct Failure(u8, String);

/// Parses the command line; help and version print as usual, errors as one line, status 2.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e)
            if !e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::MissingSubcommand
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            eprintln!("reporter: a subcommand is needed: run, seed show, lease show, receive or rollup (see reporter --help)");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            // Keep clap's "a similar argument exists" hint: it names the fix.
            let tip = rendered
                .lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("tip: "))
                .map(|t| format!("; {t}"))
                .unwrap_or_default();
            eprintln!("reporter: {first}{tip} (see reporter --help)");
            Err(ExitCode::from(2))
        }
    }
}

/// The `reporter` binary's `main`.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logs(&cli);
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
                command: SeedCommand::Show(args),
            } => seed_show(args).await,
            Command::Lease {
                command: LeaseCommand::Show(args),
            } => lease_show(args).await,
            Command::Receive(args) => receive(*args).await,
            Command::Rollup(args) => rollup(args).await,
            Command::Forget(args) => forget(args).await,
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
    let options = Options::from(*args);
    let replica = ReplicaBuilder::from_options(options)
        .start()
        .await
        .map_err(|e| {
            let (code, message) = cli::explain(&e);
            Failure(code, message)
        })?;
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        fatal = replica.failed() => Err(Failure(1, fatal.to_string())),
    };
    tracing::info!("shutting down");
    replica.shutdown().await;
    outcome
}

async fn receive(args: ReceiveArgs) -> Result<(), Failure> {
    let receiver = Receiver::start(args.into()).await.map_err(|e| match e {
        ReceiveError::Store(e) => Failure(2, format!("--store: {e}")),
        ReceiveError::Invalid(m) => Failure(2, m.to_string()),
        other => Failure(1, other.to_string()),
    })?;
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        fatal = receiver.failed() => Err(Failure(1, fatal)),
    };
    tracing::info!("shutting down");
    receiver.shutdown().await;
    outcome
}

async fn rollup(args: RollupArgs) -> Result<(), Failure> {
    let store = store::open(&args.store.store, &args.store.client.store_options)
        .map_err(|e| Failure(2, format!("--store: {e}")))?;
    match receiver::roll_up_all(&store).await {
        Ok(total) => println!(
            "rolled up {} reports into {} Parquet files ({} skipped)",
            total.rows, total.files, total.skipped
        ),
        Err(e) => {
            return Err(Failure(
                1,
                format!("rollup failed: {e}; run it again to redo its window"),
            ))
        }
    }
    Ok(())
}

async fn forget(args: ForgetArgs) -> Result<(), Failure> {
    let store = store::open(&args.store.store, &args.store.client.store_options)
        .map_err(|e| Failure(2, format!("--store: {e}")))?;
    let failed = |e: &dyn std::fmt::Display| Failure(1, format!("forget failed: {e}"));
    match forget::carry_out(&store, &args.cluster, args.wait.0)
        .await
        .map_err(|e| failed(&e))?
    {
        By::Us(gone) => println!(
            "forgot cluster {}: {} raw reports, {} Parquet rows in {} files, {} days of summaries",
            args.cluster, gone.raw, gone.rows, gone.files, gone.days
        ),
        By::Leader => println!(
            "forgot cluster {}: carried out by the rollup leader (its log says what was removed)",
            args.cluster
        ),
    }
    Ok(())
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

/// Logs on stderr, as text or JSON. `run` logs what it does at info; the show commands print
/// their answer and log only warnings. RUST_LOG wins over --log-level; the object store
/// client's own retry chatter is left out unless RUST_LOG asks for it.
fn init_logs(cli: &Cli) {
    let level = cli.log_level.clone().unwrap_or_else(|| match cli.command {
        Command::Run(_) | Command::Receive(_) => "info".to_string(),
        _ => "warn".to_string(),
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},object_store=warn"))
    });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn open_store(args: &StoreArgs) -> Result<Store, Failure> {
    store::open(&args.store, &args.client.store_options).map_err(|e| {
        let flag = if e.about_an_option() {
            "--store-option"
        } else {
            "--store"
        };
        Failure(2, format!("{flag}: {e}"))
    })
}

async fn seed_show(args: SeedShowArgs) -> Result<(), Failure> {
    let store = open_store(&args.store)?;
    let view = inspect::seed(store, &args.seed_name)
        .await
        .map_err(|e| Failure(1, e.to_string()))?;
    print(&view, args.json, |v| v.text());
    Ok(())
}

async fn lease_show(args: LeaseShowArgs) -> Result<(), Failure> {
    let store = open_store(&args.store)?;
    let view = inspect::lease(store)
        .await
        .map_err(|e| Failure(1, e.to_string()))?;
    print(&view, args.json, |v| v.text());
    Ok(())
}

/// Prints `view` as one line of JSON or as its text form.
fn print<T: serde::Serialize>(view: &T, json: bool, text: impl Fn(&T) -> String) {
    match serde_json::to_string(view) {
        Ok(line) if json => println!("{line}"),
        _ => print!("{}", text(view)),
    }
}
