//! Scenarios `tree` and `threads`: many processes, many threads.
//!
//! `tree`: `bench-tree-target`, a root in its own session that forks 99
//! children (100 processes, 8 MiB of patterned anonymous memory each).
//! `threads`: `bench-threads-target`, one process of 200 threads, each
//! checking its tid and a thread_local value after the restore.
//!
//! Each cycle: start the target, `crust dump -t ROOT`, reap the killed root,
//! wait until every pid and tid of `pstree.img` is free (the bench is a
//! child subreaper, so the orphaned children come to it), `crust restore
//! -d`, SIGTERM the restored root and require exit status 0.

use crate::{
    describe_status, dir_size, fmt_opt, fresh_dir, run_crust, spawn_target, tail, wait_exit,
    wait_gone, Opts, Region, Result, Samples, Scenario, Target, Thp, MIB,
};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TREE_PROCS: usize = 100;
const TREE_MIB_EACH: usize = 8;
const THREADS: usize = 200;

/// Buffer size for the copy bandwidth that the per-process overhead uses.
const BW_MIB: usize = 256;

/// The buffer the copy-out floor moves pages through: crust's dump window.
const COPY_WINDOW: usize = 2 * MIB;

/// CRIU 4.2 on this kind of machine, and crust's targets (2x faster).
struct Refs {
    criu_dump: &'static str,
    criu_restore: &'static str,
    target_dump: f64,
    target_restore: f64,
}

fn refs(sc: Scenario) -> Refs {
    match sc {
        Scenario::Tree => Refs {
            criu_dump: "0.96-1.0",
            criu_restore: "0.49-0.55",
            target_dump: 0.48,
            target_restore: 0.25,
        },
        _ => Refs {
            criu_dump: "0.13",
            criu_restore: "0.12",
            target_dump: 0.065,
            target_restore: 0.06,
        },
    }
}

#[derive(Default)]
struct MultiRun {
    dump: f64,
    restore: f64,
    dump_rss: f64,
    restore_rss: f64,
    image_bytes: u64,
    pages_bytes: u64,
    frozen: Option<f64>,
    restore_time: Option<f64>,
    procs: usize,
    tasks: usize,
    verdict: String,
}

/// Every (pid, [tids]) of `pstree.img`.
fn pstree(crust: &Path, img: &Path) -> Result<Vec<(i32, Vec<i32>)>> {
    let file = img.join("pstree.img");
    let v = crate::crust_show(crust, &file)
        .ok_or_else(|| format!("crust show {} failed", file.display()))?;
    let num = |x: &Value| match x {
        Value::Number(n) => n.as_i64().map(|n| n as i32),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let entries = v["entries"]
        .as_array()
        .ok_or_else(|| format!("{}: no entries", file.display()))?;
    entries
        .iter()
        .map(|e| {
            let pid = num(&e["pid"]).ok_or_else(|| format!("pstree entry without pid: {e}"))?;
            let tids = e["threads"]
                .as_array()
                .map(|a| a.iter().filter_map(num).collect())
                .unwrap_or_else(|| vec![pid]);
            Ok((pid, tids))
        })
        .collect()
}

/// Process group of `pid` (field 5 of /proc/PID/stat), if it exists.
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Kills what is left of a tree we started: its process group (the root is
/// its leader), then the root, and waits until the given pids are gone.
fn kill_tree(root: i32, pids: &[i32]) {
    if pgid_of(root) == Some(root) {
        // SAFETY: plain kill(2) of the group our target leads.
        unsafe { libc::kill(-root, libc::SIGKILL) };
    }
    if pgid_of(root).is_some() {
        // SAFETY: plain kill(2) of our target.
        unsafe { libc::kill(root, libc::SIGKILL) };
    }
    let _ = wait_exit(root, Duration::from_secs(30));
    for &p in pids {
        let _ = wait_gone(p, Duration::from_secs(30));
    }
}

fn target_args(sc: Scenario, dir: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = match sc {
        Scenario::Tree => vec![
            "--procs".into(),
            TREE_PROCS.to_string().into(),
            "--mib-each".into(),
            TREE_MIB_EACH.to_string().into(),
            "--dir".into(),
            dir.into(),
        ],
        _ => vec!["--threads".into(), THREADS.to_string().into()],
    };
    a.push("--pidfile".into());
    a.push(dir.join("target.pid").into());
    a
}

fn pages_bytes(img: &Path, stats: Option<&Value>) -> u64 {
    if let Some(n) = stats.and_then(|v| crate::find_num(v, "pages_written")) {
        return n as u64 * crate::PAGE as u64;
    }
    let Ok(rd) = fs::read_dir(img) else { return 0 };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn multi_cycle(o: &Opts, crust: &Path, sc: Scenario, bin: &Path, name: &str) -> Result<MultiRun> {
    let rundir = o.dir.join(format!("{}-{name}", sc.name()));
    let img = rundir.join("img");
    fresh_dir(&img)?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut r = MultiRun::default();
    let (want_procs, want_tasks) = match sc {
        Scenario::Tree => (TREE_PROCS, TREE_PROCS),
        _ => (1, THREADS),
    };

    let target = spawn_target(bin, &target_args(sc, &rundir), &rundir)?;
    let root = target.pid;
    let root_s = root.to_string();

    let dump_log = rundir.join("dump.log");
    let dump = run_crust(
        crust,
        &[
            "dump",
            "-t",
            &root_s,
            "-D",
            &s(&img),
            "-v4",
            "-o",
            &s(&dump_log),
        ],
        &rundir.join("dump.out"),
    );
    let dump = match dump {
        Ok(d) if crate::crust_ok(&d) => d,
        Ok(d) => {
            kill_tree(root, &[]);
            return Err(format!(
                "crust dump {}\n  {}\n  {}",
                describe_status(d.status),
                tail(&rundir.join("dump.out")),
                tail(&dump_log)
            ));
        }
        Err(e) => {
            kill_tree(root, &[]);
            return Err(e);
        }
    };
    r.dump = dump.wall;
    r.dump_rss = dump.maxrss_mib;

    // The dump kills the tree: reap the root (and, as subreaper, the
    // orphaned children), and wait until every pid and tid is free.
    let tree = pstree(crust, &img);
    let all: Vec<i32> = tree
        .as_ref()
        .map(|t| {
            t.iter()
                .flat_map(|(_, tids)| tids.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    match wait_exit(root, Duration::from_secs(30)) {
        Ok(st) if libc::WIFSIGNALED(st) => {}
        Ok(st) => {
            kill_tree(root, &all);
            return Err(format!("dumped root {}", describe_status(st)));
        }
        Err(e) => {
            kill_tree(root, &all);
            return Err(format!("after the dump: {e}"));
        }
    }
    for &p in &all {
        wait_gone(p, Duration::from_secs(30))?;
    }
    let tree = tree?;
    r.procs = tree.len();
    r.tasks = all.len();
    if r.procs != want_procs || r.tasks != want_tasks {
        return Err(format!(
            "pstree.img has {} processes and {} threads; the target has {want_procs} and {want_tasks}",
            r.procs, r.tasks
        ));
    }

    let stats = crate::crust_show(crust, &img.join("stats-dump.img"));
    r.frozen = stats
        .as_ref()
        .and_then(|v| crate::find_num(v, "frozen_time"))
        .map(|x| x / 1e6);
    r.pages_bytes = pages_bytes(&img, stats.as_ref());
    r.image_bytes = dir_size(&img);

    let restored_pidfile = rundir.join("restored.pid");
    let restore_log = rundir.join("restore.log");
    let restore = run_crust(
        crust,
        &[
            "restore",
            "-D",
            &s(&img),
            "-d",
            "--pidfile",
            &s(&restored_pidfile),
            "-v4",
            "-o",
            &s(&restore_log),
        ],
        &rundir.join("restore.out"),
    )?;
    if !crate::crust_ok(&restore) {
        // A failed restore must leave nothing behind; make sure of it.
        kill_tree(root, &all);
        return Err(format!(
            "crust restore {}\n  {}\n  {}",
            describe_status(restore.status),
            tail(&rundir.join("restore.out")),
            tail(&restore_log)
        ));
    }
    r.restore = restore.wall;
    r.restore_rss = restore.maxrss_mib;
    if let Some(v) = crate::crust_show(crust, &img.join("stats-restore.img")) {
        r.restore_time = crate::find_num(&v, "restore_time").map(|x| x / 1e6);
    }
    let rpid: i32 = fs::read_to_string(&restored_pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(root);
    if rpid != root {
        kill_tree(rpid, &all);
        return Err(format!(
            "restored root pid {rpid} is not the dumped pid {root}"
        ));
    }
    let live = all
        .iter()
        .filter(|p| PathBuf::from(format!("/proc/{p}")).exists())
        .count();

    let restored = Target {
        pid: rpid,
        dir: rundir.clone(),
    };
    let verdict = restored.terminate();
    if verdict.is_err() {
        kill_tree(rpid, &all);
    }
    for &p in &all {
        wait_gone(p, Duration::from_secs(30))?;
    }
    match verdict {
        Ok(line) => r.verdict = line,
        Err(e) => return Err(format!("restored target failed its check: {e}")),
    }
    if live != all.len() {
        return Err(format!(
            "after the restore only {live} of the {} dumped pids/tids existed",
            all.len()
        ));
    }
    if !o.keep {
        let _ = fs::remove_dir_all(&rundir);
    }
    Ok(r)
}

/// memcpy bandwidth between two prefaulted buffers, in bytes per second
/// (best of `runs` after one warm-up).
fn copy_bandwidth(runs: usize) -> Result<(f64, Samples)> {
    let len = BW_MIB * MIB;
    let src = Region::prefaulted(len)?;
    let mut dst = Region::prefaulted(len)?;
    let s = crate::repeat(runs, || {
        let t = Instant::now();
        dst.slice_mut().copy_from_slice(src.slice());
        std::hint::black_box(dst.slice());
        Ok(t.elapsed().as_secs_f64())
    })?;
    let best = s.best().ok_or("no bandwidth sample")?;
    Ok((len as f64 / best, s))
}

/// This machine's floors for the tree's page volume, best of the runs:
/// first touch of that much fresh anonymous memory in 4 KiB pages, a
/// write of that much into fresh tmpfs files, and a copy of that much out
/// of memory into fresh tmpfs files (process_vm_readv through a buffer)
/// with the memory freed after, each spread over every CPU at once. A
/// restore makes that much fresh memory and a dump writes that much tmpfs,
/// whatever else they do; a dump that copies the pages (and kills the
/// tree) also does the third.
struct Floors {
    fresh_memory: Samples,
    tmpfs_write: Samples,
    copy_out: Samples,
}

/// Runs `job(i)` on one thread per CPU at once, `i` the thread's number,
/// after `prepare(i)` on each; returns the wall-clock time from the start
/// of the jobs to the end of the last.
fn on_every_cpu<T>(
    prepare: impl Fn(usize) -> Result<T> + Sync,
    job: impl Fn(usize, T) -> Result<()> + Sync,
) -> Result<f64> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = std::sync::Barrier::new(cpus + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..cpus)
            .map(|i| {
                let (start, prepare, job) = (&start, &prepare, &job);
                s.spawn(move || {
                    let ready = prepare(i);
                    start.wait();
                    ready.and_then(|r| job(i, r))
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for w in workers {
            w.join()
                .map_err(|_| "a floor thread panicked".to_string())??;
        }
        Ok(t.elapsed().as_secs_f64())
    })
}

fn floors(o: &Opts, bytes: usize) -> Result<Floors> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (bytes / cpus).next_multiple_of(crate::PAGE);
    let fresh_memory = crate::repeat(o.runs, || {
        on_every_cpu(
            |_| Region::new(share, Thp::Never),
            |_, mut r| {
                r.touch();
                Ok(())
            },
        )
    })?;
    fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let file = |i: usize| o.dir.join(format!("floor-{i}.bin"));
    let tmpfs_write = crate::repeat(o.runs, || {
        let t = on_every_cpu(
            |i| {
                let _ = fs::remove_file(file(i));
                Region::prefaulted(share)
            },
            |i, src| {
                fs::write(file(i), src.slice()).map_err(|e| format!("{}: {e}", file(i).display()))
            },
        );
        for i in 0..cpus {
            let _ = fs::remove_file(file(i));
        }
        t
    })?;
    // Page images of TREE_MIB_EACH, filled through a buffer of the dump's
    // window size.
    let image = TREE_MIB_EACH * MIB;
    let image_file = |i: usize, k: usize| o.dir.join(format!("floor-{i}-{k}.bin"));
    let copy_out = crate::repeat(o.runs, || {
        let t = on_every_cpu(
            |_| Ok((Region::prefaulted(share)?, Region::prefaulted(COPY_WINDOW)?)),
            |i, (src, mut buf)| {
                let me = std::process::id() as i32;
                for (k, piece) in src.slice().chunks(image).enumerate() {
                    let path = image_file(i, k);
                    let mut f =
                        fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    for w in piece.chunks(COPY_WINDOW) {
                        let into = &mut buf.slice_mut()[..w.len()];
                        crate::vm_readv(me, w.as_ptr() as usize, into)?;
                        std::io::Write::write_all(&mut f, into)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                }
                drop(src);
                Ok(())
            },
        );
        for i in 0..cpus {
            for k in 0..share.div_ceil(image) {
                let _ = fs::remove_file(image_file(i, k));
            }
        }
        t
    })?;
    Ok(Floors {
        fresh_memory,
        tmpfs_write,
        copy_out,
    })
}

struct SRow {
    name: &'static str,
    key: &'static str,
    unit: &'static str,
    samples: Samples,
    target: Option<f64>,
    criu: &'static str,
}

fn rows(sc: Scenario, results: &[MultiRun], bw: Option<f64>, floors: Option<&Floors>) -> Vec<SRow> {
    let col = |f: &dyn Fn(&MultiRun) -> Option<f64>| {
        let mut s = Samples::default();
        for r in results {
            if let Some(v) = f(r) {
                s.push(v);
            }
        }
        s
    };
    let rf = refs(sc);
    let mut v = vec![
        SRow {
            name: "dump wall-clock",
            key: "dump_s",
            unit: "s",
            samples: col(&|r| Some(r.dump)),
            target: Some(rf.target_dump),
            criu: rf.criu_dump,
        },
        SRow {
            name: "frozen time (stats-dump)",
            key: "frozen_s",
            unit: "s",
            samples: col(&|r| r.frozen),
            target: None,
            criu: "-",
        },
        SRow {
            name: "restore wall-clock",
            key: "restore_s",
            unit: "s",
            samples: col(&|r| Some(r.restore)),
            target: Some(rf.target_restore),
            criu: rf.criu_restore,
        },
        SRow {
            name: "restore_time (stats-restore)",
            key: "restore_time_s",
            unit: "s",
            samples: col(&|r| r.restore_time),
            target: None,
            criu: "-",
        },
        SRow {
            name: "crust peak RSS, dump",
            key: "dump_peak_rss_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.dump_rss)),
            target: None,
            criu: "-",
        },
        SRow {
            name: "crust peak RSS, restore",
            key: "restore_peak_rss_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.restore_rss)),
            target: None,
            criu: "-",
        },
        SRow {
            name: "image size",
            key: "image_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.image_bytes as f64 / MIB as f64)),
            target: None,
            criu: "-",
        },
    ];
    if let (Scenario::Tree, Some(bw)) = (sc, bw) {
        let per = |t: f64, r: &MultiRun| (t - r.pages_bytes as f64 / bw) / r.procs as f64 * 1e3;
        v.push(SRow {
            name: "pages dumped",
            key: "pages_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.pages_bytes as f64 / MIB as f64)),
            target: None,
            criu: "-",
        });
        v.push(SRow {
            name: "per-process overhead, dump",
            key: "dump_overhead_ms_per_proc",
            unit: "ms",
            samples: col(&|r| Some(per(r.dump, r))),
            target: None,
            criu: "-",
        });
        v.push(SRow {
            name: "per-process overhead, restore",
            key: "restore_overhead_ms_per_proc",
            unit: "ms",
            samples: col(&|r| Some(per(r.restore, r))),
            target: None,
            criu: "-",
        });
    }
    if let Some(f) = floors {
        for (name, key, floor, of) in [
            (
                "dump / tmpfs-write floor",
                "dump_over_tmpfs_floor",
                f.tmpfs_write.best(),
                &(|r: &MultiRun| r.dump) as &dyn Fn(&MultiRun) -> f64,
            ),
            (
                "dump / copy-out floor",
                "dump_over_copy_out_floor",
                f.copy_out.best(),
                &|r: &MultiRun| r.dump,
            ),
            (
                "restore / fresh-memory floor",
                "restore_over_memory_floor",
                f.fresh_memory.best(),
                &|r: &MultiRun| r.restore,
            ),
        ] {
            v.push(SRow {
                name,
                key,
                unit: "x",
                samples: col(&|r| floor.map(|fl| of(r) / fl)),
                target: None,
                criu: "-",
            });
        }
    }
    v
}

fn print_rows(title: &str, rows: &[SRow]) {
    println!();
    println!("{title}");
    println!(
        "{:<40} {:>9} {:>9} {:>10} {:>10} {:>4}",
        "metric", "best", "median", "target", "CRIU 4.2", ""
    );
    for row in rows {
        let prec = match row.unit {
            "s" => 3,
            "ms" | "x" => 2,
            _ => 1,
        };
        let best = row.samples.best();
        let verdict = match (row.target, best) {
            (Some(t), Some(b)) if b <= t => "ok",
            (Some(_), Some(_)) => "MISS",
            _ => "",
        };
        println!(
            "{:<40} {:>9} {:>9} {:>10} {:>10} {:>4}",
            format!("{} [{}]", row.name, row.unit),
            fmt_opt(best, prec),
            fmt_opt(row.samples.median(), prec),
            row.target.map_or("-".into(), |t| format!("<= {t}")),
            row.criu,
            verdict
        );
    }
}

/// Runs scenario `sc` (tree or threads): one warm-up and `--runs` cycles.
/// Returns its JSON and the first error (a failed cycle stops the scenario).
pub(crate) fn run_scenario(
    o: &Opts,
    crust: &Path,
    sc: Scenario,
    bin: &Path,
) -> Result<(Value, Option<String>)> {
    println!();
    let (what, pids) = match sc {
        Scenario::Tree => (
            format!("{TREE_PROCS} processes x {TREE_MIB_EACH} MiB, one session"),
            TREE_PROCS,
        ),
        _ => (format!("1 process x {THREADS} threads"), 1),
    };
    println!(
        "== scenario {}: {what}; target {} ==",
        sc.name(),
        bin.display()
    );
    let bw = if sc == Scenario::Tree {
        let (bw, s) = copy_bandwidth(o.runs)?;
        println!(
            "  copy bandwidth (memcpy {BW_MIB} MiB prefaulted, best of {}): {:.2} GB/s (median {} s)",
            o.runs,
            bw / 1e9,
            fmt_opt(s.median(), 4)
        );
        Some(bw)
    } else {
        None
    };
    let floors = if sc == Scenario::Tree {
        let f = floors(o, TREE_PROCS * TREE_MIB_EACH * MIB)?;
        let mib = TREE_PROCS * TREE_MIB_EACH;
        println!(
            "  floors for {mib} MiB on every CPU at once, best of {}: first touch of fresh 4 KiB pages {} s, write into fresh tmpfs files {} s, copy out of memory into fresh tmpfs files and free it {} s",
            o.runs,
            fmt_opt(f.fresh_memory.best(), 3),
            fmt_opt(f.tmpfs_write.best(), 3),
            fmt_opt(f.copy_out.best(), 3)
        );
        Some(f)
    } else {
        None
    };
    let mut results = Vec::new();
    let mut error = None;
    for i in 0..=o.runs {
        let name = if i == 0 {
            "warmup".to_string()
        } else {
            format!("run-{i}")
        };
        match multi_cycle(o, crust, sc, bin, &name) {
            Ok(r) => {
                println!(
                    "  {name:<7} dump {:.3} s, frozen {} s, restore {:.3} s, RSS {:.1}/{:.1} MiB, image {:.1} MiB, {} procs/{} threads: {}",
                    r.dump,
                    fmt_opt(r.frozen, 3),
                    r.restore,
                    r.dump_rss,
                    r.restore_rss,
                    r.image_bytes as f64 / MIB as f64,
                    r.procs,
                    r.tasks,
                    r.verdict
                );
                if i > 0 {
                    results.push(r);
                }
            }
            Err(e) => {
                println!("  {name:<7} FAILED: {e}");
                error = Some(e);
                break;
            }
        }
    }
    let rows = rows(sc, &results, bw, floors.as_ref());
    if !results.is_empty() {
        print_rows(
            &format!(
                "== crust, scenario {}: {} run(s) after 1 warm-up; ok/MISS compares the best run ==",
                sc.name(),
                results.len()
            ),
            &rows,
        );
        if sc == Scenario::Tree {
            println!(
                "per-process overhead = (wall-clock - pages dumped / copy bandwidth) / {pids} processes"
            );
            println!(
                "floor ratios: wall-clock / the floor above (1.0 would be a dump or restore that costs no more than making its pages)"
            );
        }
    }
    let mut m = serde_json::Map::new();
    for row in &rows {
        let mut v = row.samples.json();
        v["unit"] = json!(row.unit);
        v["target"] = json!(row.target);
        v["criu_4_2"] = json!(row.criu);
        v["ok"] = json!(match (row.target, row.samples.best()) {
            (Some(t), Some(b)) => Some(b <= t),
            _ => None,
        });
        m.insert(row.key.into(), v);
    }
    m.insert("processes".into(), json!(pids));
    m.insert(
        "threads".into(),
        json!(if sc == Scenario::Tree {
            TREE_PROCS
        } else {
            THREADS
        }),
    );
    m.insert("copy_bandwidth_gb_per_s".into(), json!(bw.map(|b| b / 1e9)));
    m.insert(
        "floors".into(),
        json!(floors.as_ref().map(|f| json!({
            "fresh_memory_4k_all_cpus": f.fresh_memory.json(),
            "tmpfs_write_fresh_all_cpus": f.tmpfs_write.json(),
            "copy_out_and_free_all_cpus": f.copy_out.json(),
        }))),
    );
    m.insert("error".into(), json!(error));
    Ok((Value::Object(m), error))
}
