//! `plush client`: a Plush client on real TCP, run by `plush_mio::client::run`.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `plush client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address to listen on (`ip:port`): the client's identity in the overlay.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The cluster key: a file of 64 hex digits, readable by its owner only (mode 0600); `-`
    /// reads the key from the first line of stdin (how the ssh and command launchers pass it).
    #[arg(long)]
    pub key_file: PathBuf,
    /// Most links to hold at once; the default is the open-file limit (raised to its hard
    /// limit) less a reserve for pipes and the process itself.
    #[arg(long)]
    pub max_fds: Option<usize>,
    /// Most children of this client in the tree (the controller's `--degree` is passed here
    /// by the launchers).
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=i64::from(plush_core::wire::MAX_LIST as u32)))]
    pub max_children: Option<u32>,
    /// Refuse client upgrades pushed by the controller (they fail on this host); for hosts that
    /// share the controller's file system and binary.
    #[arg(long)]
    pub no_upgrade: bool,
    /// Once listening (the ready line printed), leave the session that started the client:
    /// stdin and stdout are let go, what it has to say goes to `client-IP-PORT.log` beside the
    /// job record (`$XDG_RUNTIME_DIR/plush`, else `~/.cache/plush`; made on its first line),
    /// and the process that was started exits 0 while the client goes on. The ssh launchers
    /// pass it, so that each login ends once its client listens, as a pdsh command's does.
    #[arg(long)]
    pub detach: bool,
    /// Listen on this inherited socket instead of binding --listen (how an upgraded client
    /// restarts on its new binary without ever closing its address).
    #[arg(long, hide = true, value_name = "FD")]
    pub listen_fd: Option<i32>,
    /// Tree launch (`--launch-from tree` at the controller, which passes this on): launch the
    /// hosts of a share given to this client from this host, with `ssh` (the system ssh to each
    /// host by its IP address, copying this binary where it is missing) or `local` (processes
    /// on this machine). Without it, such hosts go back to the controller.
    #[arg(long, value_name = "KIND")]
    pub launcher: Option<String>,
    /// With `--launcher ssh`: an option for ssh, before the host name. May be repeated.
    #[arg(long = "ssh-option", value_name = "OPT", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
}

/// Run the client until the overlay is dismantled.
pub fn run(args: &ClientArgs) -> ExitCode {
    let launcher = match plush_mio::client::member_launcher_kind(args.launcher.as_deref(), args.ssh_options.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plush client: {e}");
            return ExitCode::from(2);
        }
    };
    run_options(plush_mio::ClientOptions {
        launcher,
        listen: args.listen,
        key_file: args.key_file.clone(),
        max_fds: args.max_fds,
        max_children: args.max_children.map(|d| d as usize),
        listen_fd: args.listen_fd,
        no_upgrade: args.no_upgrade,
        detach: args.detach,
    })
}

/// The same, from options parsed without clap (`plush_mio::client::parse_args`).
pub fn run_options(opts: plush_mio::ClientOptions) -> ExitCode {
    if opts.listen_fd.is_none() {
        if let Err(e) = plush_mio::client::check_listen(opts.listen) {
            // A bad command line, not a failure of the client.
            eprintln!("plush client: {e}");
            return ExitCode::from(2);
        }
    }
    if opts.max_children.is_some_and(|d| d == 0 || d > plush_core::wire::MAX_LIST) {
        eprintln!("plush client: --max-children: from 1 to {}", plush_core::wire::MAX_LIST);
        return ExitCode::from(2);
    }
    let listen = opts.listen;
    match plush_mio::client::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            plush_mio::client::stderr_ready();
            eprintln!("plush client {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
