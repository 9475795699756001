//! `reporter`: the command-line face of usage-reporter. See `reporter --help`.

fn main() -> std::process::ExitCode {
    usage_reporter::cli::main()
}
