//! Credentials, seccomp, prctl state and CPU/I/O scheduling per thread:
//! each restored as dumped, checked by the workloads themselves and from
//! outside; images whose credentials crust cannot grant are refused before
//! any process is created.

use crust_image::{names, pb, ImageKind};
use crust_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The credential and seccomp lines of every thread of `pid`, by tid.
fn thread_creds(pid: i32) -> Vec<(String, Vec<String>)> {
    let mut tids: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    tids.sort();
    tids.into_iter()
        .map(|t| {
            let st = fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
            let lines = st
                .lines()
                .filter(|l| {
                    ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:", "Seccomp"]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .map(String::from)
                .collect();
            (t, lines)
        })
        .collect()
}

/// Dump `w`, check it is gone, decode the images, restore it and check the
/// same threads have the same credentials as before; returns the images.
fn dump_restore_same_creds(w: &mut Workload) -> std::path::PathBuf {
    let before = thread_creds(w.pid);
    eprintln!("before: {before:#?}");
    let dir = w.images_dir("img");
    dump(w, &dir, &[]).ok();
    w.reap_original();
    assert_images_decode_fast(&dir);
    restore(w, &dir, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    let after = thread_creds(w.pid);
    assert_eq!(
        before, after,
        "credentials or seccomp state differ after restore"
    );
    dir
}

fn read_one<M: prost::Message + Default>(dir: &Path, name: &str, kind: ImageKind) -> Vec<M> {
    crust_image::read_entries(&dir.join(name), kind).unwrap()
}

#[test]
fn uid1000_caps_securebits_nnp() {
    let scratch = Scratch::new("creds");
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let mut w = Workload::start_in(scratch, "creds", &[]);
    let dir = dump_restore_same_creds(&mut w);
    let cores: Vec<pb::CoreEntry> = read_one(&dir, &names::core(w.pid as u32), ImageKind::Core);
    let c = cores[0]
        .thread_core
        .as_ref()
        .unwrap()
        .creds
        .as_ref()
        .unwrap();
    assert_eq!((c.uid, c.euid, c.suid, c.fsuid), (1000, 1001, 1002, 1002));
    assert_eq!((c.gid, c.egid, c.sgid, c.fsgid), (1000, 1001, 1002, 1000));
    assert_eq!(c.cap_amb, vec![1 << 10, 0]);
    assert_eq!((c.secbits, c.no_new_privs), (0b111, Some(1)));
    w.terminate_and_check();
}

fn seccomp_case(args: &[&str]) {
    let mut w = Workload::start("seccomp", args);
    let dir = dump_restore_same_creds(&mut w);
    let first: Vec<pb::SeccompEntry> = read_one(&dir, names::SECCOMP, ImageKind::Seccomp);
    let filters = &first[0].seccomp_filters;
    // F1 shared by the main thread and thread A, F2 (LOG) and F3 on top.
    assert_eq!(filters.len(), 3, "{filters:?}");
    assert_eq!(
        filters.iter().filter(|f| f.flags == Some(2)).count(),
        1,
        "one filter with SECCOMP_FILTER_FLAG_LOG: {filters:?}"
    );
    // Dumped again, the restored task has the same filters.
    let dir2 = w.images_dir("img2");
    dump(&w, &dir2, &["-R"]).ok();
    let second: Vec<pb::SeccompEntry> = read_one(&dir2, names::SECCOMP, ImageKind::Seccomp);
    assert_eq!(first, second, "seccomp filters differ after restore");
    if args.contains(&"strict") {
        let modes: Vec<i32> = thread_ids(&dir2, w.pid)
            .iter()
            .map(|&t| {
                let c: Vec<pb::CoreEntry> = read_one(&dir2, &names::core(t), ImageKind::Core);
                c[0].thread_core.as_ref().unwrap().seccomp_mode.unwrap()
            })
            .collect();
        assert!(modes.contains(&1), "no thread in strict mode: {modes:?}");
    }
    w.terminate_and_check();
}

fn thread_ids(dir: &Path, pid: i32) -> Vec<u32> {
    let t: Vec<pb::PstreeEntry> = read_one(dir, names::PSTREE, ImageKind::Pstree);
    t.into_iter().find(|e| e.pid == pid as u32).unwrap().threads
}

#[test]
fn seccomp_stacked_filters() {
    seccomp_case(&[]);
}

#[test]
fn seccomp_filters_and_strict_thread() {
    seccomp_case(&["strict"]);
}

#[test]
fn prctl_affinity_ioprio_per_thread() {
    let mut w = Workload::start("prctl", &[]);
    let dir = dump_restore_same_creds(&mut w);
    let cores: Vec<pb::CoreEntry> = read_one(&dir, &names::core(w.pid as u32), ImageKind::Core);
    let th = cores[0].thread_core.as_ref().unwrap();
    assert_eq!(th.crust_timer_slack, Some(123_456));
    assert_eq!(th.crust_ioprio, Some(2 << 13 | 5));
    assert_eq!(cores[0].tc.as_ref().unwrap().child_subreaper, Some(true));
    w.terminate_and_check();
}

/// Rewrite the main thread's credentials in the core image of `pid`.
fn spoil_creds(dir: &Path, pid: i32, f: impl FnOnce(&mut pb::CredsEntry)) {
    let name = names::core(pid as u32);
    let mut cores: Vec<pb::CoreEntry> = read_one(dir, &name, ImageKind::Core);
    f(cores[0]
        .thread_core
        .as_mut()
        .unwrap()
        .creds
        .as_mut()
        .unwrap());
    crust_image::write_entries(&dir.join(&name), ImageKind::Core, &cores).unwrap();
    forget_manifest(dir);
}

/// A change that makes credentials impossible to restore.
type Spoil = Box<dyn Fn(&mut pb::CredsEntry)>;

#[test]
fn impossible_credentials_refused() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let keep = w.images_dir("orig");
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), keep.join(e.file_name())).unwrap();
    }
    let core = names::core(w.pid as u32);
    let cases: [(&str, Spoil); 3] = [
        (
            // Root here lacks CAP_SYS_RESOURCE: crust cannot grant it.
            "CAP_SYS_RESOURCE",
            Box::new(|c| {
                c.cap_prm[0] |= 1 << 24;
                c.cap_eff[0] |= 1 << 24;
            }),
        ),
        ("uid 4294967295", Box::new(|c| c.uid = u32::MAX)),
        (
            "ambient capabilities CAP_NET_RAW",
            Box::new(|c| {
                c.cap_amb = vec![1 << 13, 0];
                c.cap_inh = vec![0, 0];
            }),
        ),
    ];
    for (needle, spoil) in cases {
        fs::copy(keep.join(&core), dir.join(&core)).unwrap();
        spoil_creds(&dir, w.pid, spoil);
        let out = crust(&["restore", "-D", s(&dir), "-d"]).fails();
        out.stderr_names(&[needle]);
        assert_pid_free(w.pid);
    }
    // The unspoiled images still restore.
    fs::copy(keep.join(&core), dir.join(&core)).unwrap();
    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

#[test]
fn bad_seccomp_images_refused() {
    let mut w = Workload::start("seccomp", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let core = names::core(w.pid as u32);
    let mut cores: Vec<pb::CoreEntry> = read_one(&dir, &core, ImageKind::Core);
    let saved = cores.clone();
    cores[0].thread_core.as_mut().unwrap().seccomp_filter = Some(99);
    crust_image::write_entries(&dir.join(&core), ImageKind::Core, &cores).unwrap();
    forget_manifest(&dir);
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&[&core, "seccomp filter 99"]);
    assert_pid_free(w.pid);
    // Filters named by the cores, but no seccomp.img.
    crust_image::write_entries(&dir.join(&core), ImageKind::Core, &saved).unwrap();
    forget_manifest(&dir);
    fs::remove_file(dir.join(names::SECCOMP)).unwrap();
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&[names::SECCOMP]);
    assert_pid_free(w.pid);
}
