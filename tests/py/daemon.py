# A daemon by double fork: its session leader (the middle process) exited,
# and it was adopted by the nearest subreaper. It checks its sid, pgid and
# that it is still alone in its session once D/stop exists.
import os, sys, time
D = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        before = (os.getsid(0), os.getpgid(0))
        open(D + '/pid.tmp', 'w').write(str(os.getpid())); os.rename(D + '/pid.tmp', D + '/pid')
        while not os.path.exists(D + '/stop'): time.sleep(0.05)
        after = (os.getsid(0), os.getpgid(0))
        ok = before == after and after[0] != os.getpid()
        open(D + '/out', 'w').write("PASS\n" if ok else "FAIL %s %s\n" % (before, after))
        os._exit(0)
    os._exit(0)
os.wait()
