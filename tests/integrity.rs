//! Image integrity: the checksum manifest, dumps into a full or read-only
//! folder, restores of damaged images.

use crust_tests::*;
use prost_reflect::ReflectMessage;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MANIFEST: &str = "crust-manifest.txt";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tmpfs mounted for one test, unmounted (lazily) on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mount a tmpfs with `options` (e.g. `size=1M` or `ro`) at a fresh
    /// folder `name` of `scratch`.
    fn tmpfs(scratch: &Scratch, name: &str, options: &str) -> Mount {
        let path = scratch.subdir(name);
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "crust-test", s(&path)])
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mount tmpfs {options} at {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Mount { path }
    }

    /// Bind-mount `from` at a fresh folder `name` of `scratch`, read-only.
    fn read_only_bind(scratch: &Scratch, name: &str, from: &Path) -> Mount {
        let path = scratch.subdir(name);
        for args in [
            vec!["--bind", s(from), s(&path)],
            vec!["-o", "remount,bind,ro", s(&path)],
        ] {
            let o = Command::new("mount")
                .args(&args)
                .output()
                .expect("run mount");
            assert!(
                o.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Mount { path }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// The files of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// After a failed dump: no file of `dir` makes it look like an image set.
fn assert_not_an_image_set(dir: &Path) {
    let files = listing(dir);
    assert!(
        !files.iter().any(|f| f == "inventory.img" || f == MANIFEST),
        "a failed dump left what looks like a complete image set in {}: {files:?}",
        dir.display()
    );
}

/// The task is running (not stopped, not traced) and still whole.
fn assert_untouched(w: &mut Workload) {
    assert!(w.is_alive(), "wl-{} died after the failed dump", w.name);
    let t0 = Instant::now();
    while tracer_pid(w.pid) != Some(0) || pid_state(w.pid) == Some('t') {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "wl-{} is still traced or stopped after the failed dump",
            w.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    w.terminate_and_check();
}

/// `crust check-images -D DIR [extra]`.
fn check_images(dir: &Path, extra: &[&str]) -> CrustRun {
    let mut args = vec!["check-images", "-D", s(dir)];
    args.extend_from_slice(extra);
    crust(&args)
}

/// Dump `w` (killing it) into a fresh dir and wait until its pid is free.
fn dump_killed(w: &mut Workload) -> PathBuf {
    let dir = w.images_dir("img");
    dump(w, &dir, &[]).ok();
    w.reap_original();
    dir
}

/// Restore `dir` detached and check the workload passes.
fn restore_and_check(w: &mut Workload, dir: &Path, extra: &[&str]) -> CrustRun {
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    let r = restore(w, dir, &args).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
    r
}

/// Restore must fail (exit 1, no panic) naming every one of `needles`, and
/// leave no process with the dumped pid.
fn assert_restore_refused(w: &Workload, dir: &Path, needles: &[&str]) {
    assert_restore_refused_with(w, dir, &[], needles)
}

/// [`assert_restore_refused`] with `extra` restore options.
fn assert_restore_refused_with(w: &Workload, dir: &Path, extra: &[&str], needles: &[&str]) {
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    let r = restore(w, dir, &args).fails().stderr_names(needles);
    assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    assert!(
        !pid_alive(w.pid),
        "a refused restore left pid {} behind",
        w.pid
    );
}

// ------------------------------------------------------------ the manifest

#[test]
fn manifest_lists_every_file_and_crit_ignores_it() {
    let mut w = Workload::start("memory", &["16"]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    let text = fs::read_to_string(dir.join(MANIFEST)).expect("the dump wrote a manifest");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("crust-manifest 2 xxh3-64"));
    let listed: Vec<&str> = lines.map(|l| l.rsplit(' ').next().unwrap()).collect();
    let mut on_disk = listing(&dir);
    on_disk.retain(|f| f != MANIFEST);
    assert_eq!(
        listed, on_disk,
        "the manifest lists exactly the files of the dump"
    );
    assert!(!on_disk.iter().any(|f| f.ends_with(".partial")));
    check_images(&dir, &["--strict-images"])
        .ok()
        .stderr_names(&[]);
    // crit: every image still decodes, and the folder-level commands do
    // not trip over the manifest.
    assert_images_decode(&dir);
    if let Some(crit) = crit_bin() {
        for x in ["ps", "fds", "mems", "rss"] {
            let o = Command::new(&crit)
                .args(["x", s(&dir), x])
                .output()
                .expect("run crit");
            assert!(
                o.status.success(),
                "crit x DIR {x} fails with the manifest there: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    w.terminate_and_check();
}

#[test]
fn damaged_images_are_refused() {
    let mut w = Workload::start("memory", &["16"]);
    let dir = dump_killed(&mut w);
    let pages = image_file(&dir, "pages-");
    let good = fs::read(&pages).unwrap();

    // One flipped bit deep inside the page file.
    let mut bad = good.clone();
    let at = bad.len() / 2 + 123;
    bad[at] ^= 0x10;
    fs::write(&pages, &bad).unwrap();
    assert_restore_refused(&w, &dir, &["pages-", "checksum mismatch"]);
    check_images(&dir, &[])
        .fails()
        .stderr_names(&["pages-", "checksum"]);

    // Shorter.
    fs::write(&pages, &good[..good.len() - 4096]).unwrap();
    assert_restore_refused(&w, &dir, &["pages-", "size is"]);

    // Missing.
    fs::write(&pages, &good).unwrap();
    let core = image_file(&dir, "core-");
    let core_bytes = fs::read(&core).unwrap();
    fs::remove_file(&core).unwrap();
    assert_restore_refused(&w, &dir, &["core-", "missing"]);
    check_images(&dir, &[])
        .fails()
        .stderr_names(&["core-", "missing"]);

    // Every problem is listed.
    fs::write(&pages, &bad).unwrap();
    let r = check_images(&dir, &[]).fails();
    assert!(
        r.stderr.contains("pages-") && r.stderr.contains("core-"),
        "{}",
        r.describe()
    );

    // Put right, it restores.
    fs::write(&pages, &good).unwrap();
    fs::write(&core, &core_bytes).unwrap();
    check_images(&dir, &[]).ok();
    restore_and_check(&mut w, &dir, &[]);
}

#[test]
fn damaged_manifest_is_refused() {
    let mut w = Workload::start("counter", &[]);
    let dir = dump_killed(&mut w);
    let man = dir.join(MANIFEST);
    let good = fs::read_to_string(&man).unwrap();
    fs::write(&man, good.replacen("xxh3-64", "md5", 1)).unwrap();
    assert_restore_refused(&w, &dir, &[MANIFEST, "header"]);
    fs::write(&man, format!("{good}12 zz ../../etc/passwd\n")).unwrap();
    assert_restore_refused(&w, &dir, &[MANIFEST, "line"]);
    fs::write(&man, &good).unwrap();
    restore_and_check(&mut w, &dir, &[]);
}

#[test]
fn images_without_manifest_restore_with_a_warning_unless_strict() {
    let mut w = Workload::start("counter", &[]);
    let dir = dump_killed(&mut w);
    fs::remove_file(dir.join(MANIFEST)).unwrap();
    check_images(&dir, &[])
        .ok()
        .stderr_names(&["warning", MANIFEST]);
    check_images(&dir, &["--strict-images"]).fails();
    assert_restore_refused_with(
        &w,
        &dir,
        &["--strict-images"],
        &[MANIFEST, "--strict-images"],
    );
    let log = w.scratch.join("restore.log");
    restore_and_check(&mut w, &dir, &[]);
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("restoring without verifying checksums"),
        "no warning about the missing manifest in the restore log:\n{text}"
    );
}

// ---------------------------------------------- disk full, unwritable dirs

#[test]
fn dump_into_a_full_disk_fails_cleanly_and_the_task_runs_on() {
    let mut w = Workload::start("memory", &["64"]);
    let mnt = Mount::tmpfs(&w.scratch, "small", "size=1M");
    let dir = mnt.path.join("img");
    let r = dump(&w, &dir, &[]).fails().stderr_names(&["no space"]);
    assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    assert_not_an_image_set(&dir);
    assert_untouched(&mut w);
}

/// A small task into tmpfs of growing sizes: each dump either fails
/// cleanly (task untouched, no image set) or succeeds whole.
#[test]
fn dump_fails_cleanly_wherever_the_disk_fills_up() {
    let mut w = Workload::start("counter", &[]);
    let mut outcomes = Vec::new();
    // Coarse steps, then 4 KiB steps around where the page image's
    // allocation (before the freeze) first fits, so that later writes (in
    // the freeze, at commit) run out of room too.
    // And tmpfs with room for only N files (inodes): the dump runs out at
    // its Nth file, wherever that is (in the freeze, at commit).
    let coarse = [4, 16, 64, 256].map(|k| format!("size={k}k"));
    let fine = (320..=560).step_by(8).map(|k| format!("size={k}k"));
    let inodes = (2..=22).map(|n| format!("size=4m,nr_inodes={n}"));
    let mut failed_late = 0;
    for (i, opts) in coarse.into_iter().chain(fine).chain(inodes).enumerate() {
        let kib = &opts;
        let mnt = Mount::tmpfs(&w.scratch, &format!("t{i}"), &opts);
        let dir = mnt.path.join("img");
        let r = dump(&w, &dir, &["-R"]);
        assert!(!r.stderr.contains("panicked"), "{}", r.describe());
        assert!(w.is_alive(), "the task died in a dump into tmpfs {kib}");
        if r.status.success() {
            check_images(&dir, &["--strict-images"]).ok();
            outcomes.push(format!("{kib}: ok"));
        } else {
            assert_eq!(r.code(), Some(1), "{}", r.describe());
            assert_not_an_image_set(&dir);
            if !r.stderr.contains("allocating") {
                failed_late += 1;
            }
            outcomes.push(format!(
                "{kib}: failed ({} files left)",
                listing(&dir).len()
            ));
        }
    }
    eprintln!("{outcomes:?}");
    eprintln!("{failed_late} dumps failed after the page images were allocated");
    assert!(outcomes.iter().any(|o| o.contains("failed")));
    assert!(outcomes.iter().any(|o| o.contains("ok")));
    assert!(failed_late >= 5, "too few dumps failed late: {outcomes:?}");
    assert_untouched(&mut w);
}

#[test]
fn dump_into_a_read_only_dir_fails_cleanly() {
    let mut w = Workload::start("memory", &["16"]);
    let ro = Mount::tmpfs(&w.scratch, "ro", "ro,size=1M");
    let r = dump(&w, &ro.path, &[])
        .fails()
        .stderr_names(&[s(&ro.path), "read-only"]);
    assert!(!r.stderr.contains("panicked"));
    let target = w.scratch.subdir("target");
    let bind = Mount::read_only_bind(&w.scratch, "bind", &target);
    dump(&w, &bind.path, &[])
        .fails()
        .stderr_names(&["read-only"]);
    assert_not_an_image_set(&target);
    assert_untouched(&mut w);
}

// ------------------------------------------- damaged images, file by file

/// One way to spoil a file: what was done, and the new contents.
struct Mutation {
    what: String,
    bytes: Vec<u8>,
}

/// Truncations, byte flips and, for protobuf images, every integer field
/// (top level and one message deep) set to its type's maximum.
fn mutations(name: &str, good: &[u8]) -> Vec<Mutation> {
    let len = good.len();
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = [0, 4, 8, 11, len / 3, len / 2, len.saturating_sub(1)]
        .into_iter()
        .filter(|&c| c < len)
        .collect();
    cuts.dedup();
    for c in cuts {
        out.push(Mutation {
            what: format!("truncated to {c} bytes"),
            bytes: good[..c].to_vec(),
        });
    }
    let mut flips: Vec<usize> = [0, 8, 9, 12, len / 2, len.saturating_sub(1)]
        .into_iter()
        .filter(|&p| p < len)
        .collect();
    flips.dedup();
    for p in flips {
        let mut b = good.to_vec();
        b[p] ^= 0xff;
        out.push(Mutation {
            what: format!("byte {p} flipped"),
            bytes: b,
        });
    }
    if !name.starts_with("pages-") {
        out.extend(huge_fields(good));
    }
    out
}

/// The image with every occurrence of one integer field set to the
/// maximum of its type, one mutation per field (at most 24 per file).
fn huge_fields(good: &[u8]) -> Vec<Mutation> {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Kind, Value};
    let pool = crust_image::descriptor_pool();
    let word = |at: usize| {
        good.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(first), Some(second)) = (word(0), word(4)) else {
        return Vec::new();
    };
    let (kind, skip) = match crust_image::ImageKind::from_magic(first) {
        Some(k) => (k, 4),
        None => match crust_image::ImageKind::from_magic(second) {
            Some(k) => (k, 8),
            None => return Vec::new(),
        },
    };
    use crust_image::ImageKind as K;
    if matches!(kind, K::PipesData | K::FifoData | K::GhostFile) {
        return Vec::new(); // raw payloads between entries
    }
    let Some(main) = kind
        .message_name()
        .and_then(|n| pool.get_message_by_name(n))
    else {
        return Vec::new();
    };
    let head = pool.get_message_by_name("pagemap_head");
    let mut entries = Vec::new();
    let mut r = crust_image::ImageReader::open(good, kind, "x").unwrap();
    while let Ok(Some((_, b))) = r.next_entry_bytes() {
        let d = match (&head, entries.is_empty(), kind) {
            (Some(h), true, K::Pagemap | K::ShmemPagemap) => h.clone(),
            _ => main.clone(),
        };
        entries.push(DynamicMessage::decode(d, b).unwrap());
    }
    let max = |k: &Kind| match k {
        Kind::Uint32 | Kind::Fixed32 => Some(Value::U32(u32::MAX)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Some(Value::I32(i32::MAX)),
        Kind::Uint64 | Kind::Fixed64 => Some(Value::U64(u64::MAX)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Some(Value::I64(i64::MAX)),
        _ => None,
    };
    // Field paths: (top field, optional nested field).
    let mut paths: Vec<(String, Option<String>)> = Vec::new();
    for e in &entries {
        for (f, v) in e.fields() {
            if max(&f.kind()).is_some() && !f.is_list() {
                paths.push((f.name().into(), None));
            }
            let nested: Vec<&DynamicMessage> = match v {
                Value::Message(m) => vec![m],
                Value::List(l) => l.iter().filter_map(|x| x.as_message()).collect(),
                _ => vec![],
            };
            for m in nested {
                for (g, _) in m.fields() {
                    if max(&g.kind()).is_some() && !g.is_list() {
                        paths.push((f.name().into(), Some(g.name().into())));
                    }
                }
            }
        }
    }
    paths.sort();
    paths.dedup();
    let step = paths.len().div_ceil(24).max(1);
    let mut out = Vec::new();
    for (top, sub) in paths.into_iter().step_by(step) {
        let mut bytes = good[..skip].to_vec();
        for e in &entries {
            let mut e = e.clone();
            if let Some(f) = e.descriptor().get_field_by_name(&top) {
                match &sub {
                    None => {
                        if let Some(v) = max(&f.kind()) {
                            if e.has_field(&f) {
                                e.set_field(&f, v);
                            }
                        }
                    }
                    Some(sub) => match e.get_field_mut(&f) {
                        Value::Message(m) => set_max(m, sub, &max),
                        Value::List(l) => {
                            for x in l.iter_mut() {
                                if let Value::Message(m) = x {
                                    set_max(m, sub, &max);
                                }
                            }
                        }
                        _ => {}
                    },
                }
            }
            let body = e.encode_to_vec();
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        let what = match sub {
            None => format!("{top} = max"),
            Some(s) => format!("{top}.{s} = max"),
        };
        out.push(Mutation { what, bytes });
    }
    out
}

fn set_max(
    m: &mut prost_reflect::DynamicMessage,
    name: &str,
    max: &dyn Fn(&prost_reflect::Kind) -> Option<prost_reflect::Value>,
) {
    if let Some(g) = m.descriptor().get_field_by_name(name) {
        if let Some(v) = max(&g.kind()) {
            if m.has_field(&g) {
                m.set_field(&g, v);
            }
        }
    }
}

/// `crust restore -D DIR -d` as a hostile image could make it: inside a
/// pid namespace of its own (so that whatever a damaged image makes crust
/// or the restored tree do, it cannot signal anything outside), under a
/// shell as its init that, after a failed restore, reports every process
/// still in the namespace as `LEFT BEHIND`. The namespace, and any tree
/// restored in it, ends when the shell exits.
fn isolated_restore(dir: &Path, pidfile: &Path, log: &Path) -> std::process::Child {
    const INIT: &str = r#""$0" "$@"; rc=$?
if [ $rc -ne 0 ]; then
  sleep 0.3
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = 1 ] && continue
    read -r c < "$p/comm" 2>/dev/null && echo "LEFT BEHIND: ${p#/proc/} $c"
  done
fi
exit $rc"#;
    let f = fs::File::create(log).expect("create log");
    Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            INIT,
        ])
        .arg(crust_bin())
        .args(["restore", "-D", s(dir), "-d", "--pidfile", s(pidfile)])
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn unshare")
}

/// Dump a workload, then spoil each image file in turn (the manifest
/// removed, so the damage reaches the readers) and restore: crust must
/// refuse with an error naming a file, or restore a working tree; never
/// panic, hang, or leave a process behind.
fn restore_every_damaged_image(w: &mut Workload) {
    let dir = dump_killed(w);
    fs::remove_file(dir.join(MANIFEST)).unwrap();
    let files = listing(&dir);
    let log = w.scratch.join("damaged-restore.log");
    let pidfile = w.scratch.join("damaged.pid");
    let (mut runs, mut refused, mut restored, mut semantic) = (0, 0, 0, 0);
    let mut unnamed = Vec::new();
    let t0 = Instant::now();
    for name in &files {
        let path = dir.join(name);
        let good = fs::read(&path).unwrap();
        for m in mutations(name, &good) {
            fs::write(&path, &m.bytes).unwrap();
            let _ = fs::remove_file(&pidfile);
            let mut child = isolated_restore(&dir, &pidfile, &log);
            let st = wait_child(&mut child, Duration::from_secs(30));
            runs += 1;
            let out = fs::read_to_string(&log).unwrap_or_default();
            let case = format!("{name}, {}: crust {st}\n{out}", m.what);
            assert!(
                !out.contains("panicked") && st.code() != Some(101) && st.code().is_some(),
                "crust crashed: {case}"
            );
            assert!(
                !out.contains("LEFT BEHIND"),
                "a process was left behind: {case}"
            );
            if st.success() {
                // A harmless mutation: the tree came back (and went with
                // its namespace).
                restored += 1;
            } else {
                refused += 1;
                assert_eq!(st.code(), Some(1), "{case}");
                if !out.contains(".img") {
                    // A framing error always names its file; a well-formed
                    // value the kernel refuses names the call that failed.
                    if m.what.ends_with("= max") {
                        semantic += 1;
                    } else {
                        unnamed.push(case.clone());
                    }
                }
            }
        }
        fs::write(&path, &good).unwrap();
    }
    eprintln!(
        "{runs} damaged restores in {:?}: {refused} refused ({semantic} by the kernel, \
         naming the call rather than the file), {restored} harmless",
        t0.elapsed()
    );
    assert!(
        unnamed.is_empty(),
        "{} refusals name no image file:\n{}",
        unnamed.len(),
        unnamed.join("\n")
    );
    // The pristine images still restore.
    restore_and_check(w, &dir, &[]);
}

#[test]
fn damaged_images_never_crash_restore_memory() {
    restore_every_damaged_image(&mut Workload::start("memory", &["2"]));
}

#[test]
fn damaged_images_never_crash_restore_pipe() {
    restore_every_damaged_image(&mut Workload::start("pipe", &[]));
}
