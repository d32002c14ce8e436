//! `vmdesk`: with no command, the desktop console; with one, the CLI. Both
//! call the same core API over the same data directory.

mod app;
mod cli;
mod tray;

fn main() {
    std::process::exit(cli::main());
}
