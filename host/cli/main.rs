//! The `projector` binary: the command line over the service, the bench and the plugin-author
//! tools.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
