# Sessions and groups whose leaders exited before the dump, and orphans the
# root (a child subreaper) adopted. Each process records its sid, pgid and
# ppid and, once D/stop exists, checks them again and writes D/ok-NAME.
import os, sys, time, ctypes
D = sys.argv[1]
PR_SET_CHILD_SUBREAPER = 36
os.setsid()
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

def ids():
    return (os.getsid(0), os.getpgid(0), os.getppid())

def settle(name, expect=None):
    """Once the leaders are gone (D/go), record the ids; once D/stop
    exists, check they did not change."""
    open(D + '/up-' + name, 'w').close()
    while not os.path.exists(D + '/go'): time.sleep(0.02)
    before = ids()
    open(D + '/ready-' + name, 'w').close()
    while not os.path.exists(D + '/stop'): time.sleep(0.05)
    after = ids()
    ok = after == before and (expect is None or expect(after))
    open(D + '/ok-' + name, 'w').write(("PASS" if ok else "FAIL %s %s" % (before, after)) + "\n")
    # B stays until C has checked its parent.
    deadline = time.time() + 10
    while name == 'b' and not os.path.exists(D + '/ok-c') and time.time() < deadline:
        time.sleep(0.02)
    os._exit(0)

def wait_for(what, *names):
    while not all(os.path.exists(D + '/' + what + '-' + n) for n in names): time.sleep(0.02)

root = os.getpid()
# A leads a new session and exits; B (adopted by the root) and its child C
# stay in A's session and group.
r, w = os.pipe()
a = os.fork()
if a == 0:
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:
            settle('c', lambda t: t[0] == t[1] != os.getpid())
        settle('b', lambda t: t[0] == t[1] != os.getpid() and t[2] == root)
    os.write(w, b'x'); os._exit(0)
os.read(r, 1); os.waitpid(a, 0)
# X leads a group in the root's session and exits; Y stays in X's group.
x = os.fork()
if x == 0:
    os.setpgid(0, 0)
    while True: time.sleep(1)
y = os.fork()
if y == 0:
    while os.getpgid(x) != x: time.sleep(0.01)
    os.setpgid(0, x)
    settle('y', lambda t: t[1] == x and t[0] == root and t[2] == root)
wait_for('up', 'b', 'c', 'y')
os.kill(x, 9); os.waitpid(x, 0)
open(D + '/go', 'w').close()
wait_for('ready', 'b', 'c', 'y')
# Wait until A and X are gone for good (their pids stay taken by the session and group).
open(D + '/pid.tmp', 'w').write(str(root)); os.rename(D + '/pid.tmp', D + '/pid')
while not os.path.exists(D + '/stop'): time.sleep(0.05)
deadline = time.time() + 10
names = ['b', 'c', 'y']
while not all(os.path.exists(D + '/ok-' + n) for n in names) and time.time() < deadline:
    time.sleep(0.02)
res = [open(D + '/ok-' + n).read().strip() if os.path.exists(D + '/ok-' + n) else 'missing' for n in names]
try:
    while True: os.waitpid(-1, 0)
except ChildProcessError:
    pass
ok = all(t == 'PASS' for t in res)
open(D + '/out', 'w').write("PASS\n" if ok else "FAIL %s\n" % res)
