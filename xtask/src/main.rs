//! Project tasks: `cargo xtask <task>`.

mod bench;
mod demo;
mod ebpf;
mod install;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "exitd's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need on Debian 12 (as root): apt packages,
    /// nightly rust-src, bpf-linker, boringtun-cli. Skips what is already there.
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF object (with BTF) that the agent embeds.
    BuildEbpf,
    /// Format check, clippy with warnings denied (eBPF crate too), then all tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a two-node exitd cluster in namespaces with a local etcd: XDP forwarding, a Parker
    /// node verifying its signed config, and a failover after killing the owner; cleans up.
    Demo {
        /// How long to show live traffic.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Run benchmarks (all, or the named ones), write JSON to bench/results/ and the README's
    /// benchmark table.
    Bench {
        names: Vec<String>,
        /// Only rewrite the README's table from the JSON in bench/results/; run nothing.
        #[arg(long)]
        readme: bool,
    },
    /// Build exitd (release) and install the binary, the systemd unit and the example
    /// configuration (an existing /etc/exitd/exitd.toml is kept).
    Install {
        /// Staging root to install below (packaging); `/` installs into the system.
        #[arg(long, default_value = "/")]
        dest_dir: PathBuf,
        /// Prefix for the binary and documentation.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install the already built target/release/exitd.
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { check } => setup::run(&workspace_root(), check),
        Task::BuildEbpf => build_ebpf(),
        Task::Test { args } => test::run(&workspace_root(), &args),
        Task::Demo { seconds } => demo::run(&workspace_root(), seconds),
        Task::Bench { readme: true, .. } => bench::update_readme(&workspace_root()),
        Task::Bench { names, .. } => bench::run(&workspace_root(), &names),
        Task::Install {
            dest_dir,
            prefix,
            no_build,
        } => install::run(&workspace_root(), &dest_dir, &prefix, no_build),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_ebpf() -> Result<()> {
    let object = ebpf::build(&workspace_root()).map_err(|why| {
        anyhow::anyhow!(
            "{why}\nhint: `cargo xtask setup` installs the nightly rust-src and bpf-linker"
        )
    })?;
    println!("eBPF object: {}", object.display());
    Ok(())
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command with inherited output, failing with `what` if it fails.
pub fn run_step(what: &str, cmd: &mut std::process::Command) -> Result<()> {
    eprintln!("==> {what}");
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("{what}: cannot run {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}
