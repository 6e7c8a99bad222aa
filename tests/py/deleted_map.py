import os, mmap, time, sys
D = sys.argv[1]
os.setsid()
p = D + '/data.bin'
with open(p, 'wb') as f: f.write(bytes(range(256)) * 64)
f = open(p, 'r+b')
m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
mp = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE)
mp[0:4] = b"priv"
f.close(); os.unlink(p)
open(D + '/pid.tmp','w').write(str(os.getpid())); os.rename(D + '/pid.tmp', D + '/pid')
while not os.path.exists(D + '/stop'): time.sleep(0.05)
ok = m[5] == 5 and m[300] == 300 % 256 and mp[0:4] == b"priv" and mp[10] == 10
m[0:2] = b"ok"
open(D + '/out','w').write("PASS\n" if ok and not os.path.exists(p) else "FAIL\n")
