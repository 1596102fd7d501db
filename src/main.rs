use std::process::ExitCode;

fn main() -> ExitCode {
    m3dnode::cli::main()
}
