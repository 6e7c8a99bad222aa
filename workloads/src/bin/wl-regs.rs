//! wl-regs: register and per-task kernel state.
//!
//! Waits for SIGTERM inside an inline asm loop (nanosleep syscalls) that
//! holds known values in the vector registers (zmm0-31 and k1-k7 with
//! AVX-512, else ymm0-15), in x87 st0/st1, a non-default MXCSR and x87
//! control word, and in rbx, rbp, rdx, rsi, r8-r10, r12-r15 — so the task is
//! dumped with them live. Also: a TLS value (fs_base), gs_base, a blocked
//! signal mask, several sigactions, the sigaltstack, personality, rlimits
//! (RLIMIT_NOFILE soft 512, RLIMIT_CORE soft 0), comm "wl-regs-x", nice 5,
//! credentials and a few prctl values. After SIGTERM each must be unchanged.

use std::cell::Cell;
use std::mem::{offset_of, zeroed};
use workloads::{die, mix64, Checker};

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

const GP_VALUES: [u64; 12] = [
    0x1111_2222_3333_4444, // rbx
    0x5555_6666_7777_8888, // rbp
    0x0123_4567_89ab_cdef, // r12
    0xfedc_ba98_7654_3210, // r13
    0x0f0f_0f0f_f0f0_f0f0, // r14
    0xa5a5_5a5a_c3c3_3c3c, // r15
    0x1357_9bdf_2468_ace0, // rdx
    0x8000_0000_0000_0001, // r8
    0x7fff_ffff_ffff_fffe, // r9
    0xdead_beef_cafe_babe, // r10
    0,                     // rsi (nanosleep's rem argument)
    0,
];
const GP_NAMES: [&str; 11] = [
    "rbx", "rbp", "r12", "r13", "r14", "r15", "rdx", "r8", "r9", "r10", "rsi",
];

#[repr(C, align(64))]
struct Ctx {
    ts: libc::timespec,
    flag: *const u8,
    mxcsr_in: u32,
    mxcsr_out: u32,
    mxcsr_def: u32,
    fcw_in: u16,
    fcw_out: u16,
    fcw_def: u16,
    vec_in: [u8; 2048],
    vec_out: [u8; 2048],
    k_in: [u16; 8],
    k_out: [u16; 8],
    st_in: [[u8; 16]; 2],
    st_out: [[u8; 16]; 2],
    gp_out: [u64; 12],
}

macro_rules! wait_loop_asm {
    ($ctx:expr, $load:literal, $store:literal, $($clobber:tt)*) => {
        std::arch::asm!(
            "push rbx",
            "push rbp",
            "ldmxcsr [rdi + {mxi}]",
            "fldcw [rdi + {fci}]",
            "fld tbyte ptr [rdi + {sti}]",
            "fld tbyte ptr [rdi + {sti} + 16]",
            $load,
            "mov rbx, 0x1111222233334444",
            "mov rbp, 0x5555666677778888",
            "mov r12, 0x0123456789abcdef",
            "mov r13, 0xfedcba9876543210",
            "mov r14, 0x0f0f0f0ff0f0f0f0",
            "mov r15, 0xa5a55a5ac3c33c3c",
            "mov rdx, 0x13579bdf2468ace0",
            "mov r8, 0x8000000000000001",
            "mov r9, 0x7ffffffffffffffe",
            "mov r10, 0xdeadbeefcafebabe",
            "xor esi, esi",
            "2:",
            "mov eax, 35", // nanosleep(&ctx.ts, NULL)
            "syscall",
            "mov rax, [rdi + {flag}]",
            "cmp byte ptr [rax], 0",
            "je 2b",
            "mov [rdi + {gp}], rbx",
            "mov [rdi + {gp} + 8], rbp",
            "mov [rdi + {gp} + 16], r12",
            "mov [rdi + {gp} + 24], r13",
            "mov [rdi + {gp} + 32], r14",
            "mov [rdi + {gp} + 40], r15",
            "mov [rdi + {gp} + 48], rdx",
            "mov [rdi + {gp} + 56], r8",
            "mov [rdi + {gp} + 64], r9",
            "mov [rdi + {gp} + 72], r10",
            "mov [rdi + {gp} + 80], rsi",
            $store,
            "fstp tbyte ptr [rdi + {sto} + 16]",
            "fstp tbyte ptr [rdi + {sto}]",
            "fnstcw [rdi + {fco}]",
            "stmxcsr [rdi + {mxo}]",
            "fldcw [rdi + {fcd}]",
            "ldmxcsr [rdi + {mxd}]",
            "pop rbp",
            "pop rbx",
            mxi = const offset_of!(Ctx, mxcsr_in),
            mxo = const offset_of!(Ctx, mxcsr_out),
            mxd = const offset_of!(Ctx, mxcsr_def),
            fcd = const offset_of!(Ctx, fcw_def),
            fci = const offset_of!(Ctx, fcw_in),
            fco = const offset_of!(Ctx, fcw_out),
            sti = const offset_of!(Ctx, st_in),
            sto = const offset_of!(Ctx, st_out),
            vi = const offset_of!(Ctx, vec_in),
            vo = const offset_of!(Ctx, vec_out),
            ki = const offset_of!(Ctx, k_in),
            ko = const offset_of!(Ctx, k_out),
            flag = const offset_of!(Ctx, flag),
            gp = const offset_of!(Ctx, gp_out),
            in("rdi") $ctx,
            out("rax") _, out("rcx") _, out("r11") _, out("rdx") _, out("rsi") _,
            out("r8") _, out("r9") _, out("r10") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            $($clobber)*
        )
    };
}

#[target_feature(enable = "avx512f")]
unsafe fn wait_avx512(ctx: *mut Ctx) {
    wait_loop_asm!(
        ctx,
        "vmovdqu64 zmm0, [rdi + {vi}]
         vmovdqu64 zmm1, [rdi + {vi} + 64]
         vmovdqu64 zmm2, [rdi + {vi} + 128]
         vmovdqu64 zmm3, [rdi + {vi} + 192]
         vmovdqu64 zmm4, [rdi + {vi} + 256]
         vmovdqu64 zmm5, [rdi + {vi} + 320]
         vmovdqu64 zmm6, [rdi + {vi} + 384]
         vmovdqu64 zmm7, [rdi + {vi} + 448]
         vmovdqu64 zmm8, [rdi + {vi} + 512]
         vmovdqu64 zmm9, [rdi + {vi} + 576]
         vmovdqu64 zmm10, [rdi + {vi} + 640]
         vmovdqu64 zmm11, [rdi + {vi} + 704]
         vmovdqu64 zmm12, [rdi + {vi} + 768]
         vmovdqu64 zmm13, [rdi + {vi} + 832]
         vmovdqu64 zmm14, [rdi + {vi} + 896]
         vmovdqu64 zmm15, [rdi + {vi} + 960]
         vmovdqu64 zmm16, [rdi + {vi} + 1024]
         vmovdqu64 zmm17, [rdi + {vi} + 1088]
         vmovdqu64 zmm18, [rdi + {vi} + 1152]
         vmovdqu64 zmm19, [rdi + {vi} + 1216]
         vmovdqu64 zmm20, [rdi + {vi} + 1280]
         vmovdqu64 zmm21, [rdi + {vi} + 1344]
         vmovdqu64 zmm22, [rdi + {vi} + 1408]
         vmovdqu64 zmm23, [rdi + {vi} + 1472]
         vmovdqu64 zmm24, [rdi + {vi} + 1536]
         vmovdqu64 zmm25, [rdi + {vi} + 1600]
         vmovdqu64 zmm26, [rdi + {vi} + 1664]
         vmovdqu64 zmm27, [rdi + {vi} + 1728]
         vmovdqu64 zmm28, [rdi + {vi} + 1792]
         vmovdqu64 zmm29, [rdi + {vi} + 1856]
         vmovdqu64 zmm30, [rdi + {vi} + 1920]
         vmovdqu64 zmm31, [rdi + {vi} + 1984]
         kmovw k1, [rdi + {ki} + 2]
         kmovw k2, [rdi + {ki} + 4]
         kmovw k3, [rdi + {ki} + 6]
         kmovw k4, [rdi + {ki} + 8]
         kmovw k5, [rdi + {ki} + 10]
         kmovw k6, [rdi + {ki} + 12]
         kmovw k7, [rdi + {ki} + 14]",
        "vmovdqu64 [rdi + {vo}], zmm0
         vmovdqu64 [rdi + {vo} + 64], zmm1
         vmovdqu64 [rdi + {vo} + 128], zmm2
         vmovdqu64 [rdi + {vo} + 192], zmm3
         vmovdqu64 [rdi + {vo} + 256], zmm4
         vmovdqu64 [rdi + {vo} + 320], zmm5
         vmovdqu64 [rdi + {vo} + 384], zmm6
         vmovdqu64 [rdi + {vo} + 448], zmm7
         vmovdqu64 [rdi + {vo} + 512], zmm8
         vmovdqu64 [rdi + {vo} + 576], zmm9
         vmovdqu64 [rdi + {vo} + 640], zmm10
         vmovdqu64 [rdi + {vo} + 704], zmm11
         vmovdqu64 [rdi + {vo} + 768], zmm12
         vmovdqu64 [rdi + {vo} + 832], zmm13
         vmovdqu64 [rdi + {vo} + 896], zmm14
         vmovdqu64 [rdi + {vo} + 960], zmm15
         vmovdqu64 [rdi + {vo} + 1024], zmm16
         vmovdqu64 [rdi + {vo} + 1088], zmm17
         vmovdqu64 [rdi + {vo} + 1152], zmm18
         vmovdqu64 [rdi + {vo} + 1216], zmm19
         vmovdqu64 [rdi + {vo} + 1280], zmm20
         vmovdqu64 [rdi + {vo} + 1344], zmm21
         vmovdqu64 [rdi + {vo} + 1408], zmm22
         vmovdqu64 [rdi + {vo} + 1472], zmm23
         vmovdqu64 [rdi + {vo} + 1536], zmm24
         vmovdqu64 [rdi + {vo} + 1600], zmm25
         vmovdqu64 [rdi + {vo} + 1664], zmm26
         vmovdqu64 [rdi + {vo} + 1728], zmm27
         vmovdqu64 [rdi + {vo} + 1792], zmm28
         vmovdqu64 [rdi + {vo} + 1856], zmm29
         vmovdqu64 [rdi + {vo} + 1920], zmm30
         vmovdqu64 [rdi + {vo} + 1984], zmm31
         kmovw [rdi + {ko} + 2], k1
         kmovw [rdi + {ko} + 4], k2
         kmovw [rdi + {ko} + 6], k3
         kmovw [rdi + {ko} + 8], k4
         kmovw [rdi + {ko} + 10], k5
         kmovw [rdi + {ko} + 12], k6
         kmovw [rdi + {ko} + 14], k7",
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
        out("k1") _, out("k2") _, out("k3") _, out("k4") _,
        out("k5") _, out("k6") _, out("k7") _,
    );
}

#[target_feature(enable = "avx")]
unsafe fn wait_avx(ctx: *mut Ctx) {
    wait_loop_asm!(
        ctx,
        "/* {ki} {ko} */
         vmovdqu ymm0, [rdi + {vi}]
         vmovdqu ymm1, [rdi + {vi} + 32]
         vmovdqu ymm2, [rdi + {vi} + 64]
         vmovdqu ymm3, [rdi + {vi} + 96]
         vmovdqu ymm4, [rdi + {vi} + 128]
         vmovdqu ymm5, [rdi + {vi} + 160]
         vmovdqu ymm6, [rdi + {vi} + 192]
         vmovdqu ymm7, [rdi + {vi} + 224]
         vmovdqu ymm8, [rdi + {vi} + 256]
         vmovdqu ymm9, [rdi + {vi} + 288]
         vmovdqu ymm10, [rdi + {vi} + 320]
         vmovdqu ymm11, [rdi + {vi} + 352]
         vmovdqu ymm12, [rdi + {vi} + 384]
         vmovdqu ymm13, [rdi + {vi} + 416]
         vmovdqu ymm14, [rdi + {vi} + 448]
         vmovdqu ymm15, [rdi + {vi} + 480]",
        "vmovdqu [rdi + {vo}], ymm0
         vmovdqu [rdi + {vo} + 32], ymm1
         vmovdqu [rdi + {vo} + 64], ymm2
         vmovdqu [rdi + {vo} + 96], ymm3
         vmovdqu [rdi + {vo} + 128], ymm4
         vmovdqu [rdi + {vo} + 160], ymm5
         vmovdqu [rdi + {vo} + 192], ymm6
         vmovdqu [rdi + {vo} + 224], ymm7
         vmovdqu [rdi + {vo} + 256], ymm8
         vmovdqu [rdi + {vo} + 288], ymm9
         vmovdqu [rdi + {vo} + 320], ymm10
         vmovdqu [rdi + {vo} + 352], ymm11
         vmovdqu [rdi + {vo} + 384], ymm12
         vmovdqu [rdi + {vo} + 416], ymm13
         vmovdqu [rdi + {vo} + 448], ymm14
         vmovdqu [rdi + {vo} + 480], ymm15
         vzeroupper",
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
    );
}

type SigState = (usize, i32, u64, usize);

fn mask_bits(set: &libc::sigset_t) -> u64 {
    (1..=64)
        .filter(|&s| unsafe { libc::sigismember(set, s) } == 1)
        .fold(0, |m, s| m | 1 << (s - 1))
}

fn sigactions() -> Vec<(i32, Option<SigState>)> {
    (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .map(|s| unsafe {
            let mut old: libc::sigaction = zeroed();
            let r = libc::sigaction(s, std::ptr::null(), &mut old);
            (
                s,
                (r == 0).then(|| {
                    (
                        old.sa_sigaction,
                        old.sa_flags,
                        mask_bits(&old.sa_mask),
                        old.sa_restorer.map_or(0, |f| f as usize),
                    )
                }),
            )
        })
        .collect()
}

extern "C" fn on_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
extern "C" fn on_hup(_: libc::c_int) {}

#[derive(Debug, PartialEq)]
struct TaskState {
    sigmask: u64,
    sigactions: Vec<(i32, Option<SigState>)>,
    altstack: (usize, i32, usize),
    personality: i32,
    rlimits: Vec<(u64, u64)>,
    comm: String,
    proc_comm: String,
    nice: i32,
    resuid: (u32, u32, u32),
    resgid: (u32, u32, u32),
    groups: Vec<u32>,
    dumpable: i32,
    pdeathsig: i32,
    no_new_privs: i32,
    fs_base: u64,
    gs_base: u64,
}

fn task_state() -> TaskState {
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        let mut ss: libc::stack_t = zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        let rlimits = (0..16) // RLIMIT_CPU .. RLIMIT_RTTIME
            .map(|r| {
                let mut rl: libc::rlimit = zeroed();
                libc::getrlimit(r as _, &mut rl);
                (rl.rlim_cur, rl.rlim_max)
            })
            .collect();
        let mut name = [0u8; 17];
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr());
        let comm =
            String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)])
                .into_owned();
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let (mut a, mut b, mut c) = (0, 0, 0);
        libc::getresuid(&mut a, &mut b, &mut c);
        let resuid = (a, b, c);
        libc::getresgid(&mut a, &mut b, &mut c);
        let resgid = (a, b, c);
        let mut groups = vec![0u32; 256];
        let n = libc::getgroups(256, groups.as_mut_ptr());
        groups.truncate(n.max(0) as usize);
        let mut pdeathsig = 0i32;
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig);
        let mut fs_base = 0u64;
        let mut gs_base = 0u64;
        libc::syscall(
            libc::SYS_arch_prctl,
            0x1003, /* ARCH_GET_FS */
            &mut fs_base,
        );
        libc::syscall(
            libc::SYS_arch_prctl,
            0x1004, /* ARCH_GET_GS */
            &mut gs_base,
        );
        TaskState {
            sigmask: mask_bits(&set),
            sigactions: sigactions(),
            altstack: (ss.ss_sp as usize, ss.ss_flags, ss.ss_size),
            personality: libc::personality(0xffff_ffff),
            rlimits,
            comm,
            proc_comm: std::fs::read_to_string("/proc/self/comm").unwrap_or_default(),
            nice,
            resuid,
            resgid,
            groups,
            dumpable: libc::prctl(libc::PR_GET_DUMPABLE),
            pdeathsig,
            no_new_privs: libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            fs_base,
            gs_base,
        }
    }
}

fn f64_work() -> u64 {
    let mut acc = 0f64;
    for i in 1..20_000u32 {
        let x = i as f64;
        acc += (x.sqrt() / (x + 0.5)).sin() * 1.000_000_1f64.powi(i as i32 % 50);
    }
    acc.to_bits()
}

fn main() {
    let p = workloads::init();
    unsafe {
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(_, _, _) as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGHUP);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGQUIT);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            die("sigaction SIGUSR1");
        }
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = on_hup as extern "C" fn(_) as usize;
        sa.sa_flags = libc::SA_NODEFER | libc::SA_ONSTACK;
        libc::sigaddset(&mut sa.sa_mask, libc::SIGINT);
        libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut());

        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());

        let mut rl: libc::rlimit = zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = 512;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
            die("setrlimit NOFILE");
        }
        libc::getrlimit(libc::RLIMIT_CORE, &mut rl);
        rl.rlim_cur = 0;
        if libc::setrlimit(libc::RLIMIT_CORE, &rl) != 0 {
            die("setrlimit CORE");
        }
        libc::prctl(libc::PR_SET_NAME, c"wl-regs-x".as_ptr());
        libc::setpriority(libc::PRIO_PROCESS, 0, 5);
    }
    TLS.with(|t| t.set(0x7e57_0f5b_a5e0_0001));
    let f64_before = f64_work();

    let mut ctx: Box<Ctx> = Box::new(unsafe { zeroed() });
    ctx.ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    ctx.flag = workloads::term_flag_ptr();
    ctx.mxcsr_def = 0x1f80;
    ctx.fcw_def = 0x037f;
    ctx.mxcsr_in = 0x1f80 | 0x6000; // all exceptions masked, round toward zero
    ctx.fcw_in = 0x037f & !0x0c00 | 0x0800; // round up
    for (i, b) in ctx.vec_in.iter_mut().enumerate() {
        *b = mix64(i as u64 ^ 0x5eed) as u8;
    }
    for (i, k) in ctx.k_in.iter_mut().enumerate() {
        *k = (mix64(i as u64 + 77) as u16) | 1;
    }
    // pi and -e as 80-bit extended values.
    ctx.st_in[0][..10]
        .copy_from_slice(&[0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40]);
    ctx.st_in[1][..10]
        .copy_from_slice(&[0x9b, 0x4a, 0xbb, 0xa2, 0x58, 0x54, 0xf8, 0xad, 0x00, 0xc0]);
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let avx = std::arch::is_x86_feature_detected!("avx");
    if !avx {
        die("this workload needs AVX");
    }
    let vec_len = if avx512 { 2048 } else { 512 };
    let before = task_state();
    let ctxp: *mut Ctx = &mut *ctx;

    p.ready();
    unsafe {
        if avx512 {
            wait_avx512(ctxp);
        } else {
            wait_avx(ctxp);
        }
    }

    let mut c = Checker::new();
    for (i, name) in GP_NAMES.iter().enumerate() {
        c.eq(&format!("register {name}"), GP_VALUES[i], ctx.gp_out[i]);
    }
    let reg = if avx512 { 64 } else { 32 };
    for r in 0..vec_len / reg {
        let (b, a) = (
            &ctx.vec_in[r * reg..(r + 1) * reg],
            &ctx.vec_out[r * reg..(r + 1) * reg],
        );
        c.check(a == b, || {
            format!(
                "{}{r} was {b:02x?}, now {a:02x?}",
                if avx512 { "zmm" } else { "ymm" }
            )
        });
    }
    if avx512 {
        c.eq("k1..k7", &ctx.k_in[1..], &ctx.k_out[1..]);
    }
    c.eq("x87 st0/st1", ctx.st_in, ctx.st_out);
    c.eq("MXCSR", ctx.mxcsr_in, ctx.mxcsr_out & !0x3f);
    c.eq("x87 control word", ctx.fcw_in, ctx.fcw_out);
    c.eq("TLS value", 0x7e57_0f5b_a5e0_0001, TLS.with(|t| t.get()));
    c.eq("f64 computation", f64_before, f64_work());
    let after = task_state();
    macro_rules! cmp {
        ($($f:ident),*) => { $( c.eq(stringify!($f), &before.$f, &after.$f); )* };
    }
    cmp!(
        sigmask,
        altstack,
        personality,
        rlimits,
        comm,
        proc_comm,
        nice,
        resuid,
        resgid,
        groups,
        dumpable,
        pdeathsig,
        no_new_privs,
        fs_base,
        gs_base
    );
    for (b, a) in before.sigactions.iter().zip(&after.sigactions) {
        c.eq(&format!("sigaction of signal {}", b.0), b, a);
    }
    c.check(before.sigmask & (1 << (libc::SIGUSR1 - 1)) != 0, || {
        "SIGUSR1 not blocked".into()
    });
    p.finish(c.into_result());
}
