//! Image integrity: the checksum manifest, dumps into a full or read-only
//! folder, restores of damaged images.

use crust_tests::*;
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
    assert_eq!(lines.next(), Some("crust-manifest 1 xxh3-64"));
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
fn damaged_images_are_refused_before_any_process_is_touched() {
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
