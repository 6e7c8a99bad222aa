# A shared memfd mapping (fd closed: memfd fds are refused) shared by a
# parent and its child, via ctypes so that no fd stays open.
import ctypes, ctypes.util, mmap, os, sys, time
D = sys.argv[1]
os.setsid()
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
size = 1 << 21
fd = os.memfd_create("crust-wl", 0)
os.ftruncate(fd, size)
addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
os.close(fd)
buf = (ctypes.c_char * size).from_address(addr)
buf[0:6] = b"memfd!"
buf[size // 2:size // 2 + 3] = b"mid"
pid = os.fork()
if pid == 0:
    while not os.path.exists(D + "/stop"):
        time.sleep(0.05)
    buf[10:14] = b"kid!"
    os._exit(0)
open(D + "/pid.tmp", "w").write(str(os.getpid()))
os.rename(D + "/pid.tmp", D + "/pid")
while not os.path.exists(D + "/stop"):
    time.sleep(0.05)
os.waitpid(pid, 0)
maps = open("/proc/self/maps").read()
ok = buf[0:6] == b"memfd!" and buf[size // 2:size // 2 + 3] == b"mid" and buf[10:14] == b"kid!"
ok = ok and "/memfd:crust-wl (deleted)" in maps
open(D + "/out", "w").write("PASS\n" if ok else "FAIL %r\n" % buf[0:14])
