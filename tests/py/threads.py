import os, threading, time, sys
os.setsid()
D = sys.argv[1]
n = int(sys.argv[2])
stop = False
counts = [0]*n
def work(i):
    while not stop:
        counts[i] += 1
        time.sleep(0.01)
ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
for t in ts: t.start()
open(D + '/pid.tmp','w').write(str(os.getpid())); os.rename(D + '/pid.tmp', D + '/pid')
while not os.path.exists(D + '/stop'):
    time.sleep(0.05)
tasks = len(os.listdir('/proc/self/task'))
stop = True
for t in ts: t.join()
open(D + '/out','w').write("PASS\n" if tasks == n + 1 and min(counts) > 0 else "FAIL %d tasks\n" % tasks)
