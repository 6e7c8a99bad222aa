import os, mmap, time, sys
D = sys.argv[1]
os.setsid()
m = mmap.mmap(-1, 1 << 22, flags=mmap.MAP_SHARED)
m[0:5] = b"hello"
m[1<<21:(1<<21)+3] = b"abc"
pid = os.fork()
if pid == 0:
    while True:
        if os.path.exists(D + '/stop'):
            m[100:104] = b"kid!"
            os._exit(0)
        time.sleep(0.05)
open(D + '/pid.tmp','w').write(str(os.getpid())); os.rename(D + '/pid.tmp', D + '/pid')
while not os.path.exists(D + '/stop'):
    time.sleep(0.05)
os.waitpid(pid, 0)
ok = m[0:5] == b"hello" and m[1<<21:(1<<21)+3] == b"abc" and m[100:104] == b"kid!"
open(D + '/out','w').write("PASS\n" if ok else "FAIL %r\n" % (m[0:5], ))
