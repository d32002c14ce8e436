//! `vmdesk`: with no command, the desktop console; with one, the CLI. Both
//! call the same core API over the same data directory.

mod app;
mod cli;
mod doctor;
mod logging;
mod serve;
mod store;
mod supervise;
mod team_watch;
mod terminal;
mod tray;
mod watch;

fn main() {
    std::process::exit(cli::main());
}
