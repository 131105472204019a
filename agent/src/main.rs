use clap::{CommandFactory, FromArgMatches};
use nodetap::config::{Cli, Config};

fn main() {
    // node_exporter's collector switches (--collector.<name>, ...) first: their names
    // come from the collector table, not from clap.
    let (args, node_flags) = nodetap::collectors::flags::split(std::env::args_os());
    let matches = Cli::command()
        .after_help(nodetap::collectors::flags::HELP)
        .get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut config = match Config::resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodetap: {}", nodetap::error_chain(&e));
            std::process::exit(2);
        }
    };
    if let Err(e) = node_flags.apply(&mut config.node) {
        eprintln!("nodetap: {}", nodetap::error_chain(&e));
        std::process::exit(2);
    }
    env_logger::Builder::new()
        .filter_level(config.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    for flag in &node_flags.unimplemented {
        log::warn!("--{flag}: nodetap does not implement this node_exporter collector; ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(nodetap::agent::run(config)) {
        eprintln!("nodetap: {e:#}");
        std::process::exit(1);
    }
}
