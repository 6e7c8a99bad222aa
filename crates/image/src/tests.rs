//! Tests: round trips of every kind, bad inputs (empty, truncated,
//! corrupted, wrong magic) and the compatibility proof against `crit`.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::consts::*;
use crate::pb;
use crate::*;

fn fown() -> pb::FownEntry {
    pb::FownEntry {
        uid: 1000,
        euid: 1000,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

fn itimer(isec: u64) -> pb::ItimerEntry {
    pb::ItimerEntry {
        isec,
        iusec: 0,
        vsec: isec,
        vusec: 250_000,
    }
}

fn creds() -> pb::CredsEntry {
    pb::CredsEntry {
        uid: 1000,
        gid: 1000,
        euid: 1000,
        egid: 1000,
        suid: 1000,
        sgid: 1000,
        fsuid: 1000,
        fsgid: 1000,
        cap_inh: vec![0, 0],
        cap_prm: vec![0, 0],
        cap_eff: vec![0, 0],
        cap_bnd: vec![0xffff_ffff, 0x1ff],
        secbits: 0,
        groups: vec![24, 27, 1000],
        lsm_profile: None,
        lsm_sockcreate: None,
        apparmor_data: None,
        // Newer than Debian's crit (3.17), which drops what it does not know.
        no_new_privs: None,
        cap_amb: vec![],
    }
}

fn seccomp() -> pb::SeccompEntry {
    // BPF_RET|BPF_K SECCOMP_RET_ALLOW, twice stacked, the second with LOG.
    let allow = [6u8, 0, 0, 0, 0, 0, 0xff, 0x7f].to_vec();
    pb::SeccompEntry {
        seccomp_filters: vec![
            pb::SeccompFilter {
                filter: allow.clone(),
                prev: None,
                flags: Some(0),
            },
            pb::SeccompFilter {
                filter: allow,
                prev: Some(0),
                flags: Some(2),
            },
        ],
    }
}

fn sigaction(sig: u64) -> pb::SaEntry {
    pb::SaEntry {
        sigaction: if sig == 15 { 0x5555_5555_6a10 } else { 0 },
        flags: 0x0400_0000,
        restorer: 0x7f3a_1c04_2520,
        mask: 0,
        compat_sigaction: Some(false),
        mask_extended: None,
    }
}

fn siginfo(signo: u8) -> pb::SiginfoEntry {
    let mut si = vec![0u8; 128];
    si[0] = signo;
    pb::SiginfoEntry { siginfo: si }
}

fn core_leader() -> pb::CoreEntry {
    let gpregs = pb::UserX86RegsEntry {
        r15: 0,
        r14: 0x7ffd_4c2e_1a30,
        r13: 0x5555_5555_8d30,
        r12: 0x7ffd_4c2e_1b58,
        bp: 0x7ffd_4c2e_1a40,
        bx: 0,
        r11: 0x246,
        r10: 0,
        r9: 0,
        r8: 0,
        ax: (-4i64) as u64,
        cx: 0x7f3a_1c0e_a7fa,
        dx: 0,
        si: 0x7ffd_4c2e_1a20,
        di: 0,
        orig_ax: 230,
        ip: 0x7f3a_1c0e_a7fa,
        cs: 0x33,
        flags: 0x246,
        sp: 0x7ffd_4c2e_19f8,
        ss: 0x2b,
        fs_base: 0x7f3a_1bfe_e740,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    };
    let fpregs = pb::UserX86FpregsEntry {
        cwd: 0x37f,
        swd: 0,
        twd: 0,
        fop: 0,
        rip: 0,
        rdp: 0,
        mxcsr: 0x1f80,
        mxcsr_mask: 0x2_ffff,
        st_space: vec![0; 32],
        xmm_space: (0..64).collect(),
        padding: vec![0; 24],
        xsave: Some(pb::UserX86XsaveEntry {
            xstate_bv: 0x2e7,
            ymmh_space: vec![0; 64],
            bndreg_state: vec![],
            bndcsr_state: vec![],
            opmask_reg: vec![0; 8],
            zmm_upper: vec![0; 64],
            hi16_zmm: vec![0; 128],
            pkru: vec![0x5555_5554],
        }),
    };
    let tls = (12..15)
        .map(|n| pb::UserDescT {
            entry_number: n,
            base_addr: 0,
            limit: 0,
            seg_32bit: false,
            contents_h: false,
            contents_l: false,
            read_exec_only: true,
            limit_in_pages: false,
            seg_not_present: true,
            usable: false,
        })
        .collect();
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: 0x7f3a_1bfe_ea10,
            gpregs,
            fpregs,
            tls,
        }),
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_ALIVE,
            exit_code: 0,
            personality: 0,
            flags: 0x0040_0100,
            blk_sigset: 0,
            comm: "sleeper".into(),
            timers: Some(pb::TaskTimersEntry {
                real: itimer(5),
                virt: itimer(0),
                prof: itimer(0),
                posix: vec![pb::PosixTimerEntry {
                    it_id: 0,
                    clock_id: 1,
                    si_signo: 14,
                    it_sigev_notify: 0,
                    sival_ptr: 0,
                    overrun: 0,
                    isec: 1,
                    insec: 0,
                    vsec: 0,
                    vnsec: 500_000_000,
                    notify_thread_id: None,
                }],
            }),
            rlimits: Some(pb::TaskRlimitsEntry {
                rlimits: (0..16)
                    .map(|i| pb::RlimitEntry {
                        cur: if i == 7 { 1024 } else { u64::MAX },
                        max: if i == 7 { 524_288 } else { u64::MAX },
                    })
                    .collect(),
            }),
            cg_set: Some(1),
            signals_s: Some(pb::SignalQueueEntry {
                signals: vec![siginfo(10)],
            }),
            old_seccomp_mode: None,
            old_seccomp_filter: None,
            loginuid: Some(u32::MAX),
            oom_score_adj: Some(0),
            sigactions: (1..=64)
                .filter(|s| *s != 9 && *s != 19)
                .map(sigaction)
                .collect(),
            child_subreaper: Some(false),
            blk_sigset_extended: None,
            stop_signo: None,
            membarrier_registration_mask: None,
        }),
        ids: Some(ids()),
        thread_core: Some(thread_core("sleeper")),
    }
}

fn thread_core(comm: &str) -> pb::ThreadCoreEntry {
    pb::ThreadCoreEntry {
        futex_rla: 0x7f3a_1bfe_ea20,
        futex_rla_len: 24,
        sched_nice: Some(0),
        sched_policy: Some(0),
        sched_prio: Some(0),
        blk_sigset: Some(1 << 13),
        sas: Some(pb::ThreadSasEntry {
            ss_sp: 0,
            ss_size: 0,
            ss_flags: 2,
        }),
        pdeath_sig: Some(0),
        signals_p: Some(pb::SignalQueueEntry { signals: vec![] }),
        creds: Some(creds()),
        seccomp_mode: Some(pb::SeccompMode::Disabled as i32),
        seccomp_filter: None,
        comm: Some(comm.into()),
        blk_sigset_extended: None,
        rseq_entry: Some(pb::RseqEntry {
            rseq_abi_pointer: 0x7f3a_1bfe_ee00,
            rseq_abi_size: 32,
            signature: 0x5305_3053,
            rseq_cs_pointer: None,
        }),
        crust_cpu_affinity: vec![],
        crust_ioprio: None,
        crust_timer_slack: None,
    }
}

fn core_thread() -> pb::CoreEntry {
    let mut c = core_leader();
    c.tc = None;
    c.ids = None;
    c.thread_core = Some(thread_core("worker"));
    c
}

fn ids() -> pb::TaskKobjIdsEntry {
    pb::TaskKobjIdsEntry {
        vm_id: 1,
        files_id: 2,
        fs_id: 3,
        sighand_id: 4,
        pid_ns_id: Some(5),
        net_ns_id: Some(6),
        ipc_ns_id: Some(7),
        uts_ns_id: Some(8),
        mnt_ns_id: Some(9),
        user_ns_id: Some(10),
        cgroup_ns_id: Some(11),
        time_ns_id: Some(12),
    }
}

fn vma(start: u64, end: u64, prot: u32, flags: u32, status: u32, fd: i64) -> pb::VmaEntry {
    pb::VmaEntry {
        start,
        end,
        pgoff: 0,
        shmid: 0,
        prot,
        flags,
        status,
        fd,
        madv: Some(0),
        fdflags: None,
        crust_memfd: None,
    }
}

fn mm() -> pb::MmEntry {
    pb::MmEntry {
        mm_start_code: 0x5555_5555_4000,
        mm_end_code: 0x5555_5555_5000,
        mm_start_data: 0x5555_5555_7d30,
        mm_end_data: 0x5555_5555_8010,
        mm_start_stack: 0x7ffd_4c2e_1b40,
        mm_start_brk: 0x5555_5555_9000,
        mm_brk: 0x5555_5557_a000,
        mm_arg_start: 0x7ffd_4c2e_2f10,
        mm_arg_end: 0x7ffd_4c2e_2f1c,
        mm_env_start: 0x7ffd_4c2e_2f1c,
        mm_env_end: 0x7ffd_4c2e_2fe8,
        exe_file_id: 1,
        mm_saved_auxv: vec![33, 0x7ffd_4c3f_a000, 16, 0x178b_fbff, 6, 4096, 0, 0],
        vmas: vec![
            vma(
                0x5555_5555_4000,
                0x5555_5555_5000,
                5,
                2,
                VMA_AREA_REGULAR | VMA_FILE_PRIVATE,
                1,
            ),
            vma(
                0x5555_5555_9000,
                0x5555_5557_a000,
                3,
                0x22,
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_HEAP,
                -1,
            ),
            vma(
                0x7ffd_4c20_0000,
                0x7ffd_4c30_0000,
                3,
                0x122,
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_STACK,
                -1,
            ),
            vma(
                0x7ffd_4c3f_8000,
                0x7ffd_4c3f_a000,
                1,
                0x22,
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR,
                -1,
            ),
            vma(
                0x7ffd_4c3f_a000,
                0x7ffd_4c3f_c000,
                5,
                0x22,
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VDSO,
                -1,
            ),
        ],
        dumpable: Some(1),
        aios: vec![],
        thp_disabled: Some(false),
    }
}

fn reg_file(id: u32, name: &str) -> pb::RegFileEntry {
    pb::RegFileEntry {
        id,
        flags: 0o100002,
        pos: 42,
        fown: fown(),
        name: name.into(),
        mnt_id: Some(24),
        size: Some(4096),
        ext: None,
        mode: Some(0o100644),
        build_id: vec![],
        checksum: None,
        checksum_config: None,
        checksum_parameter: None,
        // A crust extension: crit ignores it, so it would not survive the
        // crit decode + encode round trip this sample goes through.
        crust_mtime_ns: None,
        crust_ghost_id: None,
    }
}

fn termios() -> pb::TermiosEntry {
    pb::TermiosEntry {
        c_iflag: 0x500,
        c_oflag: 0x5,
        c_cflag: 0xbf,
        c_lflag: 0x8a3b,
        c_line: 0,
        c_ispeed: 15,
        c_ospeed: 15,
        c_cc: vec![
            3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0,
        ],
    }
}

fn tty_info() -> pb::TtyInfoEntry {
    pb::TtyInfoEntry {
        id: 7,
        r#type: pb::TtyType::Pty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: 100,
        pgrp: 100,
        rdev: 0x8803,
        termios: Some(termios()),
        termios_locked: Some(termios()),
        winsize: Some(pb::WinsizeEntry {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        pty: Some(pb::TtyPtyEntry { index: 3 }),
        dev: None,
        uid: Some(1000),
        gid: Some(5),
        crust_slave_hung_up: None,
    }
}

fn tty_file() -> pb::TtyFileEntry {
    pb::TtyFileEntry {
        id: 8,
        tty_info_id: 7,
        flags: 0o2,
        fown: fown(),
        regf_id: Some(9),
    }
}

fn eventfd() -> pb::EventfdFileEntry {
    pb::EventfdFileEntry {
        id: 10,
        flags: 0o4002,
        fown: fown(),
        counter: 3,
        crust_semaphore: None,
    }
}

fn eventpoll() -> pb::EventpollFileEntry {
    pb::EventpollFileEntry {
        id: 11,
        flags: 0o2,
        fown: fown(),
        tfd: vec![pb::EventpollTfdEntry {
            id: 10,
            tfd: 5,
            events: 1,
            data: 5,
            dev: Some(14),
            inode: Some(1033),
            pos: None,
            crust_target_id: None,
        }],
    }
}

fn signalfd() -> pb::SignalfdEntry {
    pb::SignalfdEntry {
        id: 12,
        flags: 0o4000,
        fown: fown(),
        sigmask: 1 << 9,
    }
}

fn timerfd() -> pb::TimerfdEntry {
    pb::TimerfdEntry {
        id: 13,
        flags: 0o2,
        fown: fown(),
        clockid: 1,
        ticks: 0,
        settime_flags: 0,
        vsec: 10,
        vnsec: 0,
        isec: 1,
        insec: 0,
    }
}

fn pipe() -> pb::PipeEntry {
    pb::PipeEntry {
        id: 3,
        pipe_id: 51234,
        flags: 0,
        fown: fown(),
    }
}

fn fifo() -> pb::FifoEntry {
    pb::FifoEntry {
        id: 14,
        pipe_id: 61234,
        regf_id: Some(15),
    }
}

fn memfd_file() -> pb::MemfdFileEntry {
    pb::MemfdFileEntry {
        id: 16,
        flags: 0o2,
        pos: 0,
        fown: fown(),
        inode_id: 1,
    }
}

fn files() -> Vec<pb::FileEntry> {
    let t = |t: pb::FdTypes, id: u32| pb::FileEntry {
        r#type: t as i32,
        id,
        ..Default::default()
    };
    vec![
        pb::FileEntry {
            reg: Some(reg_file(1, "/usr/bin/sleeper")),
            ..t(pb::FdTypes::Reg, 1)
        },
        pb::FileEntry {
            reg: Some(reg_file(2, "/tmp/log.txt")),
            ..t(pb::FdTypes::Reg, 2)
        },
        pb::FileEntry {
            pipe: Some(pipe()),
            ..t(pb::FdTypes::Pipe, 3)
        },
        pb::FileEntry {
            tty: Some(tty_file()),
            ..t(pb::FdTypes::Tty, 8)
        },
        pb::FileEntry {
            efd: Some(eventfd()),
            ..t(pb::FdTypes::Eventfd, 10)
        },
        pb::FileEntry {
            epfd: Some(eventpoll()),
            ..t(pb::FdTypes::Eventpoll, 11)
        },
        pb::FileEntry {
            sgfd: Some(signalfd()),
            ..t(pb::FdTypes::Signalfd, 12)
        },
        pb::FileEntry {
            tfd: Some(timerfd()),
            ..t(pb::FdTypes::Timerfd, 13)
        },
        pb::FileEntry {
            fifo: Some(fifo()),
            ..t(pb::FdTypes::Fifo, 14)
        },
        pb::FileEntry {
            memfd: Some(memfd_file()),
            ..t(pb::FdTypes::Memfd, 16)
        },
    ]
}

fn fdinfo() -> Vec<pb::FdinfoEntry> {
    [
        (0, 8, pb::FdTypes::Tty),
        (1, 8, pb::FdTypes::Tty),
        (3, 2, pb::FdTypes::Reg),
        (4, 3, pb::FdTypes::Pipe),
    ]
    .into_iter()
    .map(|(fd, id, t)| pb::FdinfoEntry {
        id,
        flags: 0,
        r#type: t as i32,
        fd,
        xattr_security_selinux: None,
    })
    .collect()
}

/// One sample image: kind, file name, and the encoded bytes.
pub(crate) struct Sample {
    pub(crate) kind: ImageKind,
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
}

fn image<M: Message>(kind: ImageKind, id: u64, entries: &[M]) -> Sample {
    let mut w = ImageWriter::new(Vec::new(), kind).unwrap();
    for e in entries {
        w.write_entry(e).unwrap();
    }
    Sample {
        kind,
        name: kind.file_name(id),
        bytes: w.finish().unwrap(),
    }
}

const PIPE_PAYLOAD: &[u8] = b"hello through the pipe\n";
const GHOST_PAYLOAD: &[u8] = b"contents of an unlinked file";

fn pipes_data(kind: ImageKind) -> Sample {
    let mut w = ImageWriter::new(Vec::new(), kind).unwrap();
    for (i, chunk) in [PIPE_PAYLOAD, b"".as_slice(), b"second".as_slice()]
        .iter()
        .enumerate()
    {
        w.write_entry(&pb::PipeDataEntry {
            pipe_id: 51234 + i as u32,
            bytes: chunk.len() as u32,
            size: Some(65536),
        })
        .unwrap();
        w.write_raw(chunk).unwrap();
    }
    Sample {
        kind,
        name: kind.file_name(0),
        bytes: w.finish().unwrap(),
    }
}

fn ghost_entry(chunks: bool) -> pb::GhostFileEntry {
    pb::GhostFileEntry {
        uid: 1000,
        gid: 1000,
        mode: 0o100600,
        dev: Some(0x801),
        ino: Some(123_456),
        rdev: Some(0),
        atim: Some(pb::Timeval {
            tv_sec: 1_700_000_000,
            tv_usec: 1,
        }),
        mtim: Some(pb::Timeval {
            tv_sec: 1_700_000_001,
            tv_usec: 2,
        }),
        chunks: Some(chunks),
        size: Some(GHOST_PAYLOAD.len() as u64),
        symlnk_target: None,
    }
}

fn ghost_file(chunked: bool) -> Sample {
    let kind = ImageKind::GhostFile;
    let mut w = ImageWriter::new(Vec::new(), kind).unwrap();
    w.write_entry(&ghost_entry(chunked)).unwrap();
    if chunked {
        let (a, b) = GHOST_PAYLOAD.split_at(8);
        w.write_entry(&pb::GhostChunkEntry {
            len: a.len() as u64,
            off: 0,
        })
        .unwrap();
        w.write_raw(a).unwrap();
        w.write_entry(&pb::GhostChunkEntry {
            len: b.len() as u64,
            off: 8,
        })
        .unwrap();
        w.write_raw(b).unwrap();
    } else {
        w.write_raw(GHOST_PAYLOAD).unwrap();
    }
    Sample {
        kind,
        name: kind.file_name(if chunked { 0x2a } else { 0x1f }),
        bytes: w.finish().unwrap(),
    }
}

fn pagemap(kind: ImageKind) -> Sample {
    let mut w = ImageWriter::new(Vec::new(), kind).unwrap();
    w.write_entry(&pb::PagemapHead { pages_id: 1 }).unwrap();
    for (vaddr, nr) in [(0x5555_5555_9000u64, 33u32), (0x7ffd_4c2f_e000, 2)] {
        w.write_entry(&pb::PagemapEntry {
            vaddr,
            nr_pages: nr,
            in_parent: None,
            flags: Some(PE_PRESENT),
        })
        .unwrap();
    }
    Sample {
        kind,
        name: kind.file_name(4242),
        bytes: w.finish().unwrap(),
    }
}

fn stats(kind: ImageKind) -> Sample {
    let e = if kind == ImageKind::StatsDump {
        pb::StatsEntry {
            dump: Some(pb::DumpStatsEntry {
                freezing_time: 120,
                frozen_time: 5400,
                memdump_time: 900,
                memwrite_time: 700,
                pages_scanned: 1234,
                pages_skipped_parent: 0,
                pages_written: 35,
                irmap_resolve: Some(0),
                pages_lazy: 0,
                page_pipes: Some(1),
                page_pipe_bufs: Some(2),
                shpages_scanned: Some(0),
                shpages_skipped_parent: Some(0),
                shpages_written: Some(0),
            }),
            restore: None,
        }
    } else {
        pb::StatsEntry {
            dump: None,
            restore: Some(pb::RestoreStatsEntry {
                pages_compared: 0,
                pages_skipped_cow: 0,
                forking_time: 300,
                restore_time: 4000,
                pages_restored: Some(35),
            }),
        }
    };
    image(kind, 0, &[e])
}

/// A sample of every kind with entries (everything but raw pages), plus a
/// chunked ghost file.
pub(crate) fn samples() -> Vec<Sample> {
    use ImageKind as K;
    let inv = pb::InventoryEntry {
        img_version: magic::IMAGES_V1_1,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids()),
        ns_per_id: Some(true),
        root_cg_set: Some(1),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_uptime: Some(123_456_789),
        pre_dump_mode: None,
        tcp_close: Some(false),
        network_lock_method: Some(0),
    };
    // One process with two threads, so that the sample set is a complete
    // dump that `crit x DIR ps|fds|mems` can explore.
    let pstree = [pb::PstreeEntry {
        pid: 4242,
        ppid: 0, // the root of a dump has ppid 0, as CRIU writes it
        pgid: 4242,
        sid: 4200,
        threads: vec![4242, 4243],
    }];
    let mut out = vec![
        image(K::Inventory, 0, &[inv]),
        image(K::Pstree, 0, &pstree),
        image(K::Core, 4242, &[core_leader(), core_thread()]),
        image(K::Ids, 4242, &[ids()]),
        image(K::Mm, 4242, &[mm()]),
        image(K::Vmas, 4242, &mm().vmas),
        pagemap(K::Pagemap),
        pagemap(K::ShmemPagemap),
        image(K::Files, 0, &files()),
        image(K::Fdinfo, 2, &fdinfo()),
        image(
            K::Fs,
            4242,
            &[pb::FsEntry {
                cwd_id: 2,
                root_id: 1,
                umask: Some(0o22),
            }],
        ),
        image(
            K::RegFiles,
            0,
            &[reg_file(1, "/usr/bin/sleeper"), reg_file(15, "/tmp/fifo")],
        ),
        image(K::Pipes, 0, &[pipe()]),
        pipes_data(K::PipesData),
        image(K::Fifo, 0, &[fifo()]),
        pipes_data(K::FifoData),
        ghost_file(false),
        ghost_file(true),
        image(K::TtyInfo, 0, &[tty_info()]),
        image(K::TtyFiles, 0, &[tty_file()]),
        image(
            K::TtyData,
            0,
            &[pb::TtyDataEntry {
                tty_id: 7,
                data: b"ls -l\n".to_vec(),
            }],
        ),
        stats(K::StatsDump),
        stats(K::StatsRestore),
        image(K::Creds, 4242, &[creds()]),
        image(K::Seccomp, 0, &[seccomp()]),
        image(K::Sigact, 4242, &[sigaction(15), sigaction(2)]),
        image(K::Itimers, 4242, &[itimer(1), itimer(0), itimer(0)]),
        image(
            K::PosixTimers,
            4242,
            &core_leader().tc.unwrap().timers.unwrap().posix,
        ),
        image(
            K::Rlimit,
            4242,
            &core_leader().tc.unwrap().rlimits.unwrap().rlimits,
        ),
        image(
            K::MemfdInode,
            0,
            &[pb::MemfdInodeEntry {
                name: "memfd:shared".into(),
                uid: 1000,
                gid: 1000,
                size: 8192,
                shmid: 77,
                seals: 0,
                inode_id: 1,
                hugetlb_flag: None,
            }],
        ),
        image(
            K::Timens,
            12,
            &[pb::TimensEntry {
                monotonic: pb::Timespec {
                    tv_sec: 1000,
                    tv_nsec: 5,
                },
                boottime: pb::Timespec {
                    tv_sec: 2000,
                    tv_nsec: 6,
                },
            }],
        ),
        image(K::EventfdFile, 0, &[eventfd()]),
        image(K::EventpollFile, 0, &[eventpoll()]),
        image(K::EventpollTfd, 0, &eventpoll().tfd),
        image(K::Signalfd, 0, &[signalfd()]),
        image(K::Timerfd, 0, &[timerfd()]),
        image(
            K::FileLocks,
            0,
            &[pb::FileLockEntry {
                flag: 1,
                r#type: 1,
                pid: 42,
                fd: 3,
                start: 10,
                len: 10,
            }],
        ),
    ];
    // Distinct file names for the two ghost files / pagemaps.
    for s in &mut out {
        if s.kind == K::GhostFile && s.name.contains("2a") {
            s.name = "ghost-file-2a.img".into();
        }
    }
    out
}

fn decode_all<M: Message + Default>(s: &Sample) -> Vec<M> {
    decode_entries(&s.bytes, s.kind, &s.name).unwrap()
}

#[test]
fn every_kind_has_a_sample() {
    let kinds: Vec<ImageKind> = samples().iter().map(|s| s.kind).collect();
    for k in ImageKind::ALL {
        if *k != ImageKind::Pages {
            assert!(kinds.contains(k), "no sample for {k:?}");
        }
    }
}

#[test]
fn kinds_magics_and_names() {
    for k in ImageKind::ALL.iter().copied() {
        if k == ImageKind::Pages {
            assert_eq!(ImageKind::from_magic(k.magic()), None);
            continue;
        }
        let back = ImageKind::from_magic(k.magic()).unwrap();
        assert_eq!(back.magic(), k.magic());
        assert_ne!(k.name(), "UNKNOWN", "{k:?}");
        let name = k.message_name().unwrap();
        assert!(
            descriptor_pool().get_message_by_name(name).is_some(),
            "{name}"
        );
    }
    assert_eq!(ImageKind::Core.name(), "CORE");
    assert_eq!(
        ImageKind::StatsDump.common_magic(),
        Some(magic::IMG_SERVICE)
    );
    assert_eq!(ImageKind::Inventory.common_magic(), None);
    assert_eq!(ImageKind::Core.file_name(7), "core-7.img");
    assert_eq!(names::ghost_file(31), "ghost-file-1f.img");
    assert_eq!(names::pages(1), "pages-1.img");
    // inventory.img: only its own magic; others: common + own.
    let inv = &samples()[0];
    assert_eq!(&inv.bytes[..4], &magic::INVENTORY.to_le_bytes());
    let core = &samples()[2];
    assert_eq!(&core.bytes[..4], &magic::IMG_COMMON.to_le_bytes());
    assert_eq!(&core.bytes[4..8], &magic::CORE.to_le_bytes());
}

#[test]
fn round_trip_every_kind() {
    use ImageKind as K;
    for s in samples() {
        match s.kind {
            K::Inventory => assert_eq!(decode_all::<pb::InventoryEntry>(&s)[0].img_version, 2),
            K::Pstree => assert_eq!(
                decode_all::<pb::PstreeEntry>(&s)[0].threads,
                vec![4242, 4243]
            ),
            K::Core => assert_eq!(
                decode_all::<pb::CoreEntry>(&s),
                vec![core_leader(), core_thread()]
            ),
            K::Ids => assert_eq!(decode_all::<pb::TaskKobjIdsEntry>(&s), vec![ids()]),
            K::Mm => assert_eq!(decode_all::<pb::MmEntry>(&s), vec![mm()]),
            K::Vmas => assert_eq!(decode_all::<pb::VmaEntry>(&s), mm().vmas),
            K::Files => assert_eq!(decode_all::<pb::FileEntry>(&s), files()),
            K::Fdinfo => assert_eq!(decode_all::<pb::FdinfoEntry>(&s), fdinfo()),
            K::TtyInfo => assert_eq!(decode_all::<pb::TtyInfoEntry>(&s), vec![tty_info()]),
            K::Timerfd => assert_eq!(decode_all::<pb::TimerfdEntry>(&s), vec![timerfd()]),
            K::EventpollFile => {
                assert_eq!(decode_all::<pb::EventpollFileEntry>(&s), vec![eventpoll()])
            }
            K::Creds => assert_eq!(decode_all::<pb::CredsEntry>(&s), vec![creds()]),
            K::Seccomp => assert_eq!(decode_all::<pb::SeccompEntry>(&s), vec![seccomp()]),
            K::Pagemap | K::ShmemPagemap => {
                let mut r = ImageReader::open(&s.bytes, s.kind, &s.name).unwrap();
                assert_eq!(
                    r.next_entry::<pb::PagemapHead>().unwrap().unwrap().pages_id,
                    1
                );
                let e: pb::PagemapEntry = r.next_entry().unwrap().unwrap();
                assert_eq!(
                    (e.vaddr, e.nr_pages, e.flags),
                    (0x5555_5555_9000, 33, Some(PE_PRESENT))
                );
                assert!(r.next_entry::<pb::PagemapEntry>().unwrap().is_some());
                assert!(r.next_entry::<pb::PagemapEntry>().unwrap().is_none());
            }
            K::PipesData | K::FifoData => {
                let mut r = ImageReader::open(&s.bytes, s.kind, &s.name).unwrap();
                let e: pb::PipeDataEntry = r.next_entry().unwrap().unwrap();
                assert_eq!(r.read_raw(e.bytes as usize).unwrap(), PIPE_PAYLOAD);
                let e: pb::PipeDataEntry = r.next_entry().unwrap().unwrap();
                assert_eq!(e.bytes, 0);
                let e: pb::PipeDataEntry = r.next_entry().unwrap().unwrap();
                assert_eq!(r.read_raw(e.bytes as usize).unwrap(), b"second");
                assert!(r.is_at_end());
            }
            K::GhostFile => {
                let mut r = ImageReader::open(&s.bytes, s.kind, &s.name).unwrap();
                let g: pb::GhostFileEntry = r.next_entry().unwrap().unwrap();
                let mut content = Vec::new();
                if g.chunks() {
                    while let Some(c) = r.next_entry::<pb::GhostChunkEntry>().unwrap() {
                        assert_eq!(c.off as usize, content.len());
                        content.extend_from_slice(r.read_raw_u64(c.len).unwrap());
                    }
                } else {
                    content.extend_from_slice(r.read_rest());
                }
                assert_eq!(content, GHOST_PAYLOAD);
            }
            K::StatsDump => assert_eq!(
                decode_all::<pb::StatsEntry>(&s)[0]
                    .dump
                    .unwrap()
                    .pages_written,
                35
            ),
            K::StatsRestore => assert_eq!(
                decode_all::<pb::StatsEntry>(&s)[0]
                    .restore
                    .unwrap()
                    .restore_time,
                4000
            ),
            _ => {
                // Generic: the bytes re-encode identically through our framing.
                let mut r = ImageReader::open(&s.bytes, s.kind, &s.name).unwrap();
                let mut n = 0;
                while r.next_entry_bytes().unwrap().is_some() {
                    n += 1;
                }
                assert!(n >= 1, "{:?}", s.kind);
            }
        }
    }
}

#[test]
fn raw_pages_have_no_magic() {
    let mut w = ImageWriter::new(Vec::new(), ImageKind::Pages).unwrap();
    let page = vec![0xabu8; PAGE_SIZE];
    w.write_raw(&page).unwrap();
    let bytes = w.finish().unwrap();
    assert_eq!(bytes.len(), PAGE_SIZE);
    let mut r = ImageReader::open(&bytes, ImageKind::Pages, "pages-1.img").unwrap();
    assert_eq!(r.read_raw(PAGE_SIZE).unwrap(), &page[..]);
    assert!(matches!(
        show_bytes(&bytes, "dir/pages-1.img"),
        Err(ImageError::Unexpected { .. })
    ));
}

#[test]
fn empty_and_wrong_magic() {
    let e = ImageReader::open(&[], ImageKind::Core, "core-1.img").unwrap_err();
    assert!(matches!(e, ImageError::Empty { .. }));
    assert!(e.to_string().contains("core-1.img"), "{e}");

    let mm = samples()
        .into_iter()
        .find(|s| s.kind == ImageKind::Mm)
        .unwrap();
    let e = ImageReader::open(&mm.bytes, ImageKind::Core, "core-1.img").unwrap_err();
    match &e {
        ImageError::BadMagic {
            expected, found, ..
        } => {
            assert_eq!((*expected, *found), (magic::CORE, magic::MM));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains("core-1.img") && e.to_string().contains("bad magic"),
        "{e}"
    );

    // Service magic where the common one is expected.
    let mut b = mm.bytes.clone();
    b[..4].copy_from_slice(&magic::IMG_SERVICE.to_le_bytes());
    assert!(matches!(
        ImageReader::open(&b, ImageKind::Mm, "mm"),
        Err(ImageError::BadMagic { .. })
    ));
    // Unknown magic in show.
    assert!(matches!(
        show_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], "x.img"),
        Err(ImageError::UnknownMagic { .. })
    ));
    assert!(matches!(
        show_bytes(&[], "x.img"),
        Err(ImageError::Empty { .. })
    ));
}

#[test]
fn truncated_entry_and_too_large() {
    let core = samples()
        .into_iter()
        .find(|s| s.kind == ImageKind::Core)
        .unwrap();
    let cut = &core.bytes[..core.bytes.len() - 1];
    let e = decode_entries::<pb::CoreEntry>(cut, ImageKind::Core, "core-4242.img").unwrap_err();
    assert!(matches!(e, ImageError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().starts_with("core-4242.img: truncated"), "{e}");

    let mut big = core.bytes[..8].to_vec();
    big.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = decode_entries::<pb::CoreEntry>(&big, ImageKind::Core, "core-1.img").unwrap_err();
    assert!(
        matches!(e, ImageError::EntryTooLarge { offset: 8, .. }),
        "{e:?}"
    );

    let mut junk = core.bytes[..8].to_vec();
    junk.extend_from_slice(&3u32.to_le_bytes());
    junk.extend_from_slice(&[0xff, 0xff, 0xff]);
    let e = decode_entries::<pb::CoreEntry>(&junk, ImageKind::Core, "core-1.img").unwrap_err();
    assert!(matches!(e, ImageError::Decode { offset: 8, .. }), "{e:?}");
    assert!(e.to_string().contains("CoreEntry"), "{e}");
}

/// Every prefix of every sample either decodes (when cut at an entry
/// boundary) or fails with a typed error; nothing panics.
#[test]
fn every_truncation_is_a_typed_error() {
    for s in samples() {
        for len in 0..s.bytes.len() {
            let cut = &s.bytes[..len];
            let res = generic_walk(cut, s.kind, &s.name);
            let header = if s.kind == ImageKind::Inventory { 4 } else { 8 };
            if len < header {
                assert!(res.is_err(), "{} cut at {len}", s.name);
            }
            if let Err(e) = res {
                assert!(e.to_string().contains(&s.name));
            }
            let _ = show_bytes(cut, &s.name);
        }
    }
}

/// Walks an image as its kind dictates, payloads included.
fn generic_walk(bytes: &[u8], kind: ImageKind, name: &str) -> Result<usize, ImageError> {
    let mut r = ImageReader::open(bytes, kind, name)?;
    let mut n = 0;
    match kind {
        ImageKind::PipesData | ImageKind::FifoData => {
            while let Some(e) = r.next_entry::<pb::PipeDataEntry>()? {
                r.read_raw(e.bytes as usize)?;
                n += 1;
            }
        }
        ImageKind::Core => {
            while r.next_entry::<pb::CoreEntry>()?.is_some() {
                n += 1;
            }
        }
        ImageKind::Mm => {
            while r.next_entry::<pb::MmEntry>()?.is_some() {
                n += 1;
            }
        }
        ImageKind::Files => {
            while r.next_entry::<pb::FileEntry>()?.is_some() {
                n += 1;
            }
        }
        _ => {
            while r.next_entry_bytes()?.is_some() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Random byte mutations of every sample never panic (xorshift PRNG).
#[test]
fn random_mutations_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for s in samples() {
        for _ in 0..300 {
            let mut b = s.bytes.clone();
            let flips = 1 + rnd() % 4;
            for _ in 0..flips {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            if rnd() % 4 == 0 {
                b.truncate((rnd() as usize) % (b.len() + 1));
            }
            let _ = generic_walk(&b, s.kind, &s.name);
            let _ = show_bytes(&b, &s.name);
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crust-image-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn file_helpers_name_the_file() {
    let dir = temp_dir("helpers");
    let p = dir.join("fs-1.img");
    write_entries(
        &p,
        ImageKind::Fs,
        &[pb::FsEntry {
            cwd_id: 1,
            root_id: 2,
            umask: Some(0o22),
        }],
    )
    .unwrap();
    let fs: pb::FsEntry = read_single(&p, ImageKind::Fs).unwrap();
    assert_eq!(fs.umask, Some(0o22));

    let missing = dir.join("core-99.img");
    let e = read_entries::<pb::CoreEntry>(&missing, ImageKind::Core).unwrap_err();
    assert!(matches!(e, ImageError::Missing { .. }));
    assert!(e.to_string().contains("core-99.img"), "{e}");

    let two = dir.join("pstree.img");
    let pe = pb::PstreeEntry {
        pid: 1,
        ppid: 0,
        pgid: 1,
        sid: 1,
        threads: vec![1],
    };
    write_entries(&two, ImageKind::Pstree, &[pe.clone(), pe]).unwrap();
    assert!(matches!(
        read_single::<pb::PstreeEntry>(&two, ImageKind::Pstree),
        Err(ImageError::Unexpected { .. })
    ));

    let empty = dir.join("mm-1.img");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        read_single::<pb::MmEntry>(&empty, ImageKind::Mm),
        Err(ImageError::Empty { .. })
    ));
    let only_magic = dir.join("mm-2.img");
    write_entries::<pb::MmEntry>(&only_magic, ImageKind::Mm, &[]).unwrap();
    assert!(matches!(
        read_single::<pb::MmEntry>(&only_magic, ImageKind::Mm),
        Err(ImageError::Unexpected { .. })
    ));

    for s in samples() {
        std::fs::write(dir.join(&s.name), &s.bytes).unwrap();
    }
    let (head, entries) = read_pagemap(&dir.join("pagemap-4242.img")).unwrap();
    assert_eq!((head.pages_id, entries.len()), (1, 2));
    let pd = read_pipes_data(&dir.join("pipes-data.img"), ImageKind::PipesData).unwrap();
    assert_eq!(pd[0].1, PIPE_PAYLOAD);
    assert_eq!(pd.len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_every_kind() {
    for s in samples() {
        let v = show_bytes(&s.bytes, &s.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["magic"], s.kind.name(), "{}", s.name);
        assert!(!v["entries"].as_array().unwrap().is_empty(), "{}", s.name);
    }
    let all = samples();
    let core = all.iter().find(|s| s.kind == ImageKind::Core).unwrap();
    let v = show_bytes(&core.bytes, &core.name).unwrap();
    assert_eq!(v["entries"][0]["mtype"], "X86_64");
    assert_eq!(v["entries"][0]["thread_info"]["gpregs"]["orig_ax"], 230);
    assert_eq!(v["entries"][0]["tc"]["comm"], "sleeper");
    let pm = all.iter().find(|s| s.kind == ImageKind::Pagemap).unwrap();
    let v = show_bytes(&pm.bytes, &pm.name).unwrap();
    assert_eq!(v["entries"][0]["pages_id"], 1);
    assert_eq!(v["entries"][1]["nr_pages"], 33);
    let pd = all.iter().find(|s| s.kind == ImageKind::PipesData).unwrap();
    let v = show_bytes(&pd.bytes, &pd.name).unwrap();
    assert_eq!(v["entries"][0]["payload_len"], PIPE_PAYLOAD.len());
    let st = all.iter().find(|s| s.kind == ImageKind::StatsDump).unwrap();
    assert_eq!(show_bytes(&st.bytes, &st.name).unwrap()["magic"], "STATS");
}

const CRIT: &str = "/usr/bin/crit";

fn crit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(CRIT)
        .args(args)
        .output()
        .expect("run crit")
}

/// The compatibility proof: `crit show` decodes every image crust writes,
/// and what crit re-encodes from its own decoding reads back identically.
#[test]
fn crit_decodes_our_images() {
    if !Path::new(CRIT).exists() {
        eprintln!("note: {CRIT} is absent; skipping the crit compatibility test");
        return;
    }
    let dir = temp_dir("crit");
    let mut failures = Vec::new();
    for s in samples() {
        let path = dir.join(&s.name);
        std::fs::write(&path, &s.bytes).unwrap();
        let p = path.to_str().unwrap();
        let out = crit(&["show", p]);
        if !out.status.success() {
            failures.push(format!(
                "crit show {}: {}",
                s.name,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("crit show {} printed no JSON: {e}", s.name));
        assert_eq!(shown["magic"], s.kind.name(), "{}", s.name);
        let ours = show_bytes(&s.bytes, &s.name).unwrap();
        assert_eq!(
            shown["entries"].as_array().unwrap().len(),
            ours["entries"].as_array().unwrap().len(),
            "entry count of {}",
            s.name
        );

        // crit decode -> crit encode -> our reader: CRIU's encoder agrees.
        let json = dir.join(format!("{}.json", s.name));
        let back = dir.join(format!("{}.crit", s.name));
        let out = crit(&["decode", "-i", p, "-o", json.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "crit decode {}: {}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let out = crit(&[
            "encode",
            "-i",
            json.to_str().unwrap(),
            "-o",
            back.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "crit encode {}: {}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let rebuilt = std::fs::read(&back).unwrap();
        let again = show_bytes(&rebuilt, &s.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again, ours,
            "crit's re-encoding of {} decodes differently",
            s.name
        );
    }
    // Spot checks of values as crit sees them.
    let out = crit(&["show", dir.join("pstree.img").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"][0]["pid"], 4242);
    assert_eq!(v["entries"][0]["threads"][1], 4243);
    let out = crit(&["show", dir.join("core-4242.img").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"][0]["tc"]["comm"], "sleeper");
    assert_eq!(v["entries"][1]["thread_core"]["comm"], "worker");
    // crit's explorers walk the sample set as one whole dump.
    for what in ["ps", "fds", "mems"] {
        let out = crit(&["x", dir.to_str().unwrap(), what]);
        if !out.status.success() {
            failures.push(format!(
                "crit x {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if std::env::var_os("CRUST_IMAGE_KEEP").is_some() {
        eprintln!("note: sample images kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
