//! `plush-mio-client client --listen ADDR --key-file F [--max-fds N]`: the client alone, without
//! the CLI's dependencies (the tests launch it; `plush client` runs the same code).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match plush_mio::client::parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("plush-mio-client: {e}");
            return ExitCode::from(2);
        }
    };
    match plush_mio::client::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plush client {}: {e}", opts.listen);
            ExitCode::FAILURE
        }
    }
}
