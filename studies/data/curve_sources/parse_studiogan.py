"""Parse PyTorch-StudioGAN training logs (logs/**/*.log) from a bare git mirror.
For each log path, take the historical version (commit) with the most 'FID score (Step: N, ...)' lines.
Values are float(text) exactly as printed."""
import re, subprocess, json, sys
REPO = '/work/.mirror/POSTECH-CVLab+PyTorch-StudioGAN/repo'
PAT = re.compile(r'^\[INFO\] (\S+ \S+) > FID score \(Step: (\d+), Using (\w+) moments\): (\S+)\s*$')
NIMG = re.compile(r'Calculate FID score of generated images \((\d+) images\)')
def git(*a): return subprocess.run(['git','-C',REPO,*a],capture_output=True,text=True).stdout
def versions(path):
    return [c for c in git('log','--all','--format=%H','--',path).split() if c]
def parse_text(t):
    pts=[]; moments=set(); runs=t.count('Run name :'); lines=[]
    for i,l in enumerate(t.splitlines(),1):
        m=PAT.match(l)
        if m:
            pts.append((int(m.group(2)), m.group(4))); moments.add(m.group(3)); lines.append(i)
    nimg=sorted(set(NIMG.findall(t)))
    return pts, moments, runs, lines, nimg
def best_version(path):
    best=None
    for c in versions(path):
        t=subprocess.run(['git','-C',REPO,'show',f'{c}:{path}'],capture_output=True,text=True).stdout
        if not t: continue
        r=parse_text(t)
        if best is None or len(r[0])>len(best[1][0]): best=(c,r,t)
    return best
if __name__=='__main__':
    paths=sorted(set(p for p in git('log','--all','--format=','--name-only').split('\n') if p.startswith('logs/') and p.endswith('.log')))
    out={}
    for p in paths:
        b=best_version(p)
        if not b or not b[1][0]: continue
        c,(pts,mom,runs,lines,nimg),t=b
        xs=[x for x,_ in pts]
        vals=[float(v) for _,v in pts]
        mono=all(a<b for a,b in zip(xs,xs[1:]))
        nan=[x for x,v in pts if v.lower()=='nan']
        i=min(range(len(vals)),key=lambda k:vals[k])
        print(f'{len(pts):4d} {xs[0]}-{xs[-1]} mono={mono} runs={runs} mom={mom} nimg={nimg} nan={nan} best={vals[i]:.3f}@{xs[i]} {p} {c[:8]}')
        out[p]=dict(commit=c,points=[[x,float(v)] for x,v in pts],moments=sorted(mom),runs=runs,lines=[lines[0],lines[-1]],nimg=nimg,mono=mono)
    json.dump(out,open('/tmp/curves_h/studiogan_all.json','w'))
