//! `crust`: checkpoint/restore in userspace. A thin command line over
//! crust-engine, taking CRIU's common options.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// Checkpoint a running process to image files and restore it later.
#[derive(Parser)]
#[command(name = "crust", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Logging options shared by the subcommands, as CRIU spells them.
#[derive(Args, Clone)]
struct LogArgs {
    /// Write the log to FILE (relative paths are inside the images dir).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Verbosity 0-4 (-v alone means 4; default 2: errors and warnings).
    #[arg(short = 'v', value_name = "N", num_args = 0..=1, default_missing_value = "4")]
    verbosity: Option<u8>,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this kernel and these privileges have what crust needs.
    Check,
    /// Checkpoint a process into a folder of images.
    Dump {
        /// The process to dump.
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// Folder for the images.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        images_dir: PathBuf,
        /// Let the process run on after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Leave the process stopped after the dump.
        #[arg(long = "leave-stopped", conflicts_with = "leave_running")]
        leave_stopped: bool,
        /// The process is a job of an interactive shell (its terminal is the shell's).
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Dump deleted files the process holds open up to SIZE bytes each
        /// (suffixes K, M, G; default 1M, as CRIU).
        #[arg(long = "ghost-limit", value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
        ghost_limit: u64,
        /// Dump the file locks and leases the process holds (without it, a
        /// process holding one is refused).
        #[arg(short = 'l', long = "file-locks")]
        file_locks: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Restore a process from a folder of images.
    Restore {
        /// Folder with the images.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        images_dir: PathBuf,
        /// Do not wait for the restored process: exit once it runs.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the restored process's pid to FILE.
        #[arg(long = "pidfile", value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Give a process dumped with --shell-job this terminal.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Restore inside a new pid namespace, with the dumped pids there
        /// (for when they are taken here), under a small init crust provides.
        #[arg(long = "new-pid-ns")]
        new_pid_ns: bool,
        /// Accepted as CRIU's restore takes it: the locks a dump with
        /// --file-locks saved are always taken again.
        #[arg(short = 'l', long = "file-locks")]
        file_locks: bool,
        /// Refuse images without crust's checksum manifest (by default
        /// they are restored unverified, with a warning: CRIU writes none).
        #[arg(long = "strict-images")]
        strict_images: bool,
        /// Open and create the paths the images name (files, FIFOs,
        /// deleted files recreated) with crust's own privileges, as CRIU
        /// does, even when the images are not root's alone (owned by
        /// another user, writable by others, or crust not run by root):
        /// by default those have each path opened as the restored task
        /// holding it could, with its fs uid, groups and capabilities.
        #[arg(long = "trust-image-paths")]
        trust_image_paths: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Verify a dump offline: every file against the checksum manifest,
    /// every image decoded.
    CheckImages {
        /// Folder with the images.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        images_dir: PathBuf,
        /// Fail when the folder has no checksum manifest.
        #[arg(long = "strict-images")]
        strict_images: bool,
    },
    /// Decode image files to JSON (like crit show).
    Show {
        /// Image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A size as CRIU's options take it: a number of bytes with an optional
/// K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or a number with K, M or G)"))
}

fn init_log(log: &LogArgs, images_dir: Option<&Path>) -> Result<()> {
    let level = match log.verbosity.unwrap_or(2) {
        0 | 1 => "error",
        2 => "warn",
        3 => "info",
        _ => "debug",
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_target(false);
    match &log.log_file {
        Some(f) => {
            let path = match images_dir {
                Some(d) if f.is_relative() => d.join(f),
                _ => f.clone(),
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).ok();
            }
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating the log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Command::Check => {
            for ok in crust_engine::check()? {
                println!("ok: {ok}");
            }
            println!("Looks good.");
            Ok(0)
        }
        Command::Dump {
            pid,
            images_dir,
            leave_running,
            leave_stopped,
            shell_job,
            ghost_limit,
            file_locks,
            log,
        } => {
            init_log(&log, Some(&images_dir))?;
            let stats = crust_engine::dump(&crust_engine::DumpOptions {
                pid,
                images_dir,
                leave_running,
                leave_stopped,
                shell_job,
                ghost_limit,
                file_locks,
            })?;
            tracing::info!(
                "dumped {pid}: frozen {} us, {} pages written",
                stats.frozen_us,
                stats.pages_written
            );
            Ok(0)
        }
        Command::Restore {
            images_dir,
            detached,
            pidfile,
            shell_job,
            new_pid_ns,
            file_locks: _,
            strict_images,
            trust_image_paths,
            log,
        } => {
            init_log(&log, Some(&images_dir))?;
            let restored = crust_engine::restore(&crust_engine::RestoreOptions {
                images_dir,
                shell_job,
                new_pid_ns,
                strict_images,
                trust_image_paths,
            })?;
            if let Some(p) = pidfile {
                write_pidfile(&p, restored.root)
                    .with_context(|| format!("writing the pidfile {}", p.display()))?;
            }
            if detached {
                return Ok(0);
            }
            Ok(crust_engine::wait_for(restored.child)?)
        }
        Command::CheckImages {
            images_dir,
            strict_images,
        } => check_images(&images_dir, strict_images),
        Command::Show { files } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for f in files {
                let v = crust_image::show(&f)?;
                let text = serde_json::to_string_pretty(&v)?;
                match writeln!(out, "{text}") {
                    // A reader that stopped early (| head) is not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
                    r => r?,
                }
            }
            Ok(0)
        }
    }
}

/// `crust check-images`: print what was checked and every problem; exit
/// 1 if there is any (or, with `strict`, if there is no manifest).
fn check_images(dir: &Path, strict: bool) -> Result<i32> {
    use crust_engine::images::ManifestCheck;
    let report = crust_engine::images::check_images(dir)?;
    let mut failed = !report.problems.is_empty();
    match &report.manifest {
        ManifestCheck::Absent => {
            let what = if strict { "error" } else { "warning" };
            eprintln!(
                "{what}: {} has no {} (not written by crust?): checksums not verified",
                dir.display(),
                crust_image::manifest::MANIFEST
            );
            failed |= strict;
        }
        ManifestCheck::Checked { files, bytes, .. } => {
            println!("manifest: {files} files, {bytes} bytes checked");
        }
    }
    println!("decoded: {} images", report.decoded);
    for p in &report.problems {
        eprintln!("error: {p}");
    }
    if failed {
        eprintln!("{}: the images are NOT fit to restore", dir.display());
        Ok(1)
    } else {
        println!("{}: images OK", dir.display());
        Ok(0)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Write `pid` to `path` whole or not at all: to a temporary name next to
/// it, then renamed, so that whoever waits for the file never reads it
/// empty.
fn write_pidfile(path: &std::path::Path, pid: i32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
