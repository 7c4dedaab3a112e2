//! The `strom` binary: everything is in the library (`strom_cli::main`).

fn main() -> std::process::ExitCode {
    strom_cli::main()
}
