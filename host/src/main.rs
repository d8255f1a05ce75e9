fn main() -> std::process::ExitCode {
    projector::cli::main()
}
