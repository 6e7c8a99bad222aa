//! Ghost files: files a task holds open after they were unlinked are dumped
//! with their contents (ghost-file-N.img) and recreated for the restore,
//! up to --ghost-limit.

use crust_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// wl-ghost with its DIR inside the scratch dir; `kib` of contents.
fn start_ghost(kib: Option<&str>) -> (Workload, PathBuf) {
    let scratch = Scratch::new("ghost");
    let dir = scratch.subdir("data");
    let mut args = vec![s(&dir).to_string()];
    args.extend(kib.map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = Workload::start_in(scratch, "ghost", &args);
    (w, dir)
}

fn ghost_path(data: &Path) -> PathBuf {
    data.join("ghost.dat")
}

/// Restore detached, check the pid is back and nothing is left at the
/// ghost's path, then SIGTERM and assert PASS.
fn restore_and_check(w: &mut Workload, img: &Path, data: &Path) {
    restore(w, img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    assert!(
        !ghost_path(data).exists(),
        "the recreated ghost file is still at {}",
        ghost_path(data).display()
    );
    w.terminate_and_check();
}

fn crust_show_json(file: &Path) -> serde_json::Value {
    let r = crust(&["show", s(file)]).ok();
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("crust show {} printed no JSON ({e})", file.display()))
}

#[test]
fn workload_passes_without_dump() {
    let (mut w, _) = start_ghost(None);
    w.terminate_and_check();
}

#[test]
fn deleted_file_round_trip() {
    let (mut w, data) = start_ghost(None);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    // One ghost image for the two fds of the one deleted inode.
    let ghosts: Vec<_> = fs::read_dir(&img)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ghost-file-"))
        .collect();
    assert_eq!(ghosts, vec!["ghost-file-1.img".to_string()]);
    let size = fs::metadata(img.join("ghost-file-1.img")).unwrap().len();
    assert!(size > 100 << 10, "ghost-file-1.img is only {size} bytes");
    assert_images_decode(&img);
    let v = crust_show_json(&img.join("ghost-file-1.img")).to_string();
    assert!(
        v.contains("102400"),
        "crust show of the ghost lacks its size: {v}"
    );
    let files = crust_show_json(&img.join("files.img")).to_string();
    assert!(
        files.contains(s(&ghost_path(&data))) && !files.contains("(deleted)"),
        "files.img does not name the ghost's original path: {files}"
    );
    restore_and_check(&mut w, &img, &data);
}

#[test]
fn large_deleted_file_needs_ghost_limit() {
    let (mut w, data) = start_ghost(Some("2048"));
    let img = w.images_dir("img");
    dump(&w, &img, &[])
        .fails()
        .stderr_names(&["ghost-limit", "ghost.dat", "2097152", "1048576"]);
    assert!(
        !img.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(
        !img.join("ghost-file-1.img").exists(),
        "refused dump left a ghost image"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));

    let img2 = w.images_dir("img2");
    dump(&w, &img2, &["--ghost-limit", "4M"]).ok();
    w.reap_original();
    assert_images_decode(&img2);
    restore_and_check(&mut w, &img2, &data);
}

#[test]
fn large_deleted_file_refused_leaves_task_passing() {
    let (mut w, _) = start_ghost(Some("2048"));
    let img = w.images_dir("img");
    dump(&w, &img, &["--ghost-limit", "1M"])
        .fails()
        .stderr_names(&["ghost-limit"]);
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

#[test]
fn bad_ghost_limit_is_a_usage_error() {
    let r = crust(&[
        "dump",
        "-t",
        "1",
        "-D",
        "/nonexistent",
        "--ghost-limit",
        "lots",
    ]);
    assert_eq!(r.code(), Some(2), "{}", r.describe());
    assert!(r.stderr.contains("lots"), "{}", r.describe());
}

/// Dump wl-ghost, spoil the images or the ghost's place with `spoil`, and
/// check the restore fails naming `names` ("PATH": the ghost's path). The
/// workload is returned for its scratch dir.
fn restore_fails_with_ghost(spoil: impl FnOnce(&Path, &Path), names: &[&str]) -> Workload {
    let (mut w, data) = start_ghost(None);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    spoil(&img, &data);
    let mut needles: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for n in &mut needles {
        if n == "PATH" {
            *n = s(&ghost_path(&data)).to_string();
        }
    }
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    restore(&w, &img, &["-d"]).fails().stderr_names(&needles);
    assert_pid_free(w.pid);
    w
}

#[test]
fn restore_ghost_image_missing() {
    let _w = restore_fails_with_ghost(
        |img, _| corrupt(&img.join("ghost-file-1.img"), Corruption::Missing),
        &["ghost-file-1.img"],
    );
}

#[test]
fn restore_ghost_image_truncated() {
    let _w = restore_fails_with_ghost(
        |img, data| {
            corrupt(&img.join("ghost-file-1.img"), Corruption::Half);
            assert!(!ghost_path(data).exists());
        },
        &["ghost-file-1.img"],
    );
}

#[test]
fn restore_ghost_image_empty() {
    let _w = restore_fails_with_ghost(
        |img, _| corrupt(&img.join("ghost-file-1.img"), Corruption::Empty),
        &["ghost-file-1.img"],
    );
}

#[test]
fn restore_ghost_image_flip_length() {
    let _w = restore_fails_with_ghost(
        |img, _| corrupt(&img.join("ghost-file-1.img"), Corruption::FlipLength),
        &["ghost-file-1.img"],
    );
}

#[test]
fn restore_ghost_path_taken() {
    let mut data_dir = PathBuf::new();
    let _w = restore_fails_with_ghost(
        |_, data| {
            fs::write(ghost_path(data), b"not the ghost").unwrap();
            data_dir = data.to_path_buf();
        },
        &["PATH"],
    );
    assert_eq!(
        fs::read(ghost_path(&data_dir)).unwrap(),
        b"not the ghost",
        "the failed restore touched the file at the ghost's path"
    );
}

#[test]
fn restore_ghost_directory_gone() {
    let _w = restore_fails_with_ghost(
        |_, data| fs::remove_dir(data).unwrap(),
        &["PATH", "directory"],
    );
}

/// A restore that fails after the ghost was recreated (its pid is taken)
/// takes the recreated file away again.
#[test]
fn failed_restore_leaves_no_ghost_behind() {
    let (mut w, data) = start_ghost(None);
    let img = w.images_dir("img");
    dump(&w, &img, &["-R"]).ok();
    assert!(w.is_alive());
    let pid = w.pid.to_string();
    restore(&w, &img, &["-d"]).fails().stderr_names(&[&pid]);
    assert!(
        !ghost_path(&data).exists(),
        "a failed restore left {} behind",
        ghost_path(&data).display()
    );
    assert!(w.is_alive(), "failed restore hurt the running original");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}
