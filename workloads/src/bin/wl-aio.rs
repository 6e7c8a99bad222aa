//! wl-aio DIR [pending]: an AIO context (io_setup(16)) that has served one
//! read of DIR/data (submitted, completed and reaped, so its ring's head
//! and tail are 1), and a second, never used one (io_setup(200), a ring
//! of several pages). With `pending`, one more read is completed but not
//! reaped (which dump refuses; it is reaped after SIGTERM).
//!
//! After SIGTERM: both contexts keep their ids and their rings the same
//! address and size in /proc/self/maps; a read submitted on each with
//! io_submit completes, and io_getevents returns its event (cookie,
//! result, the bytes read); io_destroy works.

use std::ffi::CString;
use std::path::Path;

use workloads::{die, Checker};

const DATA: &[u8] = b"crust aio data\n";

/// `struct iocb` for IOCB_CMD_PREAD.
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    lio_opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

fn io_setup(nr: u32) -> u64 {
    let mut ctx = 0u64;
    if unsafe { libc::syscall(libc::SYS_io_setup, nr, &mut ctx) } != 0 {
        die(&format!("io_setup: {}", std::io::Error::last_os_error()));
    }
    ctx
}

/// Submit a read of the whole of `fd` into `buf` with `cookie`.
fn submit(ctx: u64, fd: i32, buf: &mut [u8], cookie: u64) -> i64 {
    let cb = Iocb {
        data: cookie,
        lio_opcode: 0, // IOCB_CMD_PREAD
        fildes: fd as u32,
        buf: buf.as_mut_ptr() as u64,
        nbytes: buf.len() as u64,
        ..Default::default()
    };
    let mut list = [&cb as *const Iocb];
    unsafe { libc::syscall(libc::SYS_io_submit, ctx, 1i64, list.as_mut_ptr()) }
}

/// io_getevents(ctx, 1, 4, .., 5 s): the events returned.
fn reap(ctx: u64) -> Vec<IoEvent> {
    let mut ev = [IoEvent::default(); 4];
    let ts = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let n = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            1i64,
            4i64,
            ev.as_mut_ptr(),
            &ts,
        )
    };
    if n < 0 {
        return Vec::new();
    }
    ev[..n as usize].to_vec()
}

/// The range, permissions and name of the ring's line in /proc/self/maps
/// (its inode is new after a restore).
fn ring_line(ctx: u64) -> Option<String> {
    let l = workloads::maps_line(ctx as usize)?;
    let f: Vec<&str> = l.split_whitespace().collect();
    Some(format!(
        "{} {} {}",
        f.first()?,
        f.get(1)?,
        f.get(5..)?.join(" ")
    ))
}

fn use_once(c: &mut Checker, name: &str, ctx: u64, fd: i32, cookie: u64) {
    let mut buf = vec![0u8; 64];
    c.eq(
        &format!("{name}: io_submit"),
        1,
        submit(ctx, fd, &mut buf, cookie),
    );
    let ev = reap(ctx);
    c.check(
        ev.len() == 1 && ev[0].data == cookie && ev[0].res == DATA.len() as i64,
        || format!("{name}: io_getevents gave {ev:?}"),
    );
    c.eq(&format!("{name}: bytes read"), DATA, &buf[..DATA.len()]);
}

fn main() {
    let p = workloads::init();
    let dir = p
        .args
        .first()
        .unwrap_or_else(|| die("usage: wl-aio DIR [pending]"));
    let pending = p.args.get(1).map(String::as_str) == Some("pending");
    let path = Path::new(dir).join("data");
    std::fs::write(&path, DATA).unwrap();
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        die("open data");
    }
    let used = io_setup(16);
    let fresh = io_setup(200);
    let mut c = Checker::new();
    use_once(&mut c, "before the dump", used, fd, 7);
    let mut late = vec![0u8; 64];
    if pending && submit(used, fd, &mut late, 8) != 1 {
        die("io_submit of the pending read");
    }
    if c.failed() {
        die(&format!("{:?}", c.into_result()));
    }
    let before = (ring_line(used), ring_line(fresh));
    if before.0.is_none() || before.1.is_none() {
        die("no [aio] ring in /proc/self/maps");
    }
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("rings in maps", before, (ring_line(used), ring_line(fresh)));
    if pending {
        let ev = reap(used);
        c.check(ev.len() == 1 && ev[0].data == 8, || {
            format!("the pending event: io_getevents gave {ev:?}")
        });
    }
    use_once(&mut c, "used context", used, fd, 9);
    use_once(&mut c, "fresh context", fresh, fd, 10);
    for ctx in [used, fresh] {
        c.eq(&format!("io_destroy({ctx:#x})"), 0, unsafe {
            libc::syscall(libc::SYS_io_destroy, ctx)
        });
    }
    p.finish(c.into_result());
}
