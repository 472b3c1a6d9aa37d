"""Build studies/data/heldout_curves.json from (a) PyTorch-StudioGAN logs (parse_studiogan.py) and
(b) ajbrock/BigGAN-PyTorch logs/BigGAN_ch96_bs256x8.jsonl. Values are float() of the printed text; nothing rounded."""
import json, re, subprocess, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import parse_studiogan as ps
SG='/work/.mirror/POSTECH-CVLab+PyTorch-StudioGAN/repo'
# Mirrors fetched with the search tool's `fetch` (bare git dirs): PyTorch-StudioGAN and BigGAN-PyTorch.
ELAPSED=re.compile(r'Elapsed: (?:(\d+) days?, )?(\d+):(\d+):(\d+)')
def elapsed_resets(t):
    prev=-1; n=0
    for l in t.splitlines():
        m=ELAPSED.search(l)
        if m:
            s=int(m.group(1) or 0)*86400+int(m.group(2))*3600+int(m.group(3))*60+int(m.group(4))
            if s<prev: n+=1
            prev=s
    return n
SEL=[ # (path, id, dataset, res, model, metric detail)
 ('logs/CIFAR10/SNGAN-train-2020_09_18_14_37_00.log','studiogan_cifar10_sngan','CIFAR-10',32,'SNGAN (ResNet, cond. projection D), StudioGAN'),
 ('logs/CIFAR10/BigGAN-train-2021_01_15_14_48_48.log','studiogan_cifar10_biggan','CIFAR-10',32,'BigGAN (big_resnet), StudioGAN'),
 ('logs/CIFAR10/DCGAN-train-2020_09_15_13_23_51.log','studiogan_cifar10_dcgan','CIFAR-10',32,'DCGAN, StudioGAN'),
 ('logs/CIFAR10/LSGAN-train-2020_09_15_23_40_37.log','studiogan_cifar10_lsgan','CIFAR-10',32,'LSGAN (DCGAN arch), StudioGAN'),
 ('logs/CIFAR10/WGAN-GP-train-2020_09_16_14_17_00.log','studiogan_cifar10_wgangp','CIFAR-10',32,'WGAN-GP (ResNet), StudioGAN'),
 ('logs/CIFAR10/ADAGAN(P)-train-2021_01_31_12_59_51.log','studiogan_cifar10_adagan_p','CIFAR-10',32,'BigGAN + ADA augmentation, projection D ("ADAGAN(P)"), StudioGAN'),
 ('logs/CIFAR10/StyleGAN2-ADA-train-2021_10_16_13_21_43.log','studiogan_cifar10_stylegan2_ada','CIFAR-10',32,'StyleGAN2-ADA (StudioGAN port; class-conditional SPD/cAdaIN, ADA target 0.6)'),
 ('logs/AFHQ/StyleGAN2-SPD-ADA-train-2021_10_18_16_01_19.log','studiogan_afhq_stylegan2_spd_ada','AFHQ (cat+dog+wild, train split)',512,'StyleGAN2 + ADA (target 0.7), SPD conditioning, cAdaIN (StudioGAN)'),
 ('logs/TINY_IMAGENET/BigGAN-train-2021_01_18_11_42_25.log','studiogan_tinyimagenet_biggan','Tiny ImageNet',64,'BigGAN (big_resnet), StudioGAN'),
 ('logs/TINY_IMAGENET/ACGAN-train-2021_01_15_11_59_50.log','studiogan_tinyimagenet_acgan','Tiny ImageNet',64,'ACGAN (ResNet), StudioGAN'),
 ('logs/TINY_IMAGENET/DiffAugGAN(P)-train-2021_01_17_04_59_53.log','studiogan_tinyimagenet_diffaug_p','Tiny ImageNet',64,'BigGAN + DiffAugment, projection D ("DiffAugGAN(P)"), StudioGAN'),
 ('logs/IMAGENET/SAGAN-train-2021_02_11_16_18_59.log','studiogan_imagenet_sagan','ImageNet (ILSVRC2012)',128,'SAGAN (ResNet), StudioGAN'),
 ('logs/IMAGENET/BigGAN256-train-2021_01_24_03_52_15.log','studiogan_imagenet_biggan256','ImageNet (ILSVRC2012)',128,'BigGAN, batch 256 (StudioGAN)'),
 ('logs/IMAGENET/ContraGAN256-train-2021_01_25_13_55_18.log','studiogan_imagenet_contragan256','ImageNet (ILSVRC2012)',128,'ContraGAN, batch 256 (StudioGAN)'),
 ('logs/CIFAR10/ProjGAN-train-2020_09_17_20_05_34.log','studiogan_cifar10_projgan','CIFAR-10',32,'ProjGAN (ResNet, hinge, projection D), StudioGAN'),
 ('logs/CIFAR10/GGAN-train-2020_09_15_23_11_09.log','studiogan_cifar10_geometricgan','CIFAR-10',32,'Geometric GAN (hinge, DCGAN arch), StudioGAN'),
 ('logs/CIFAR10/StyleGAN2-D2DCE-ADA-08-train-2021_10_18_14_12_03.log','studiogan_cifar10_stylegan2_d2dce_ada','CIFAR-10',32,'StyleGAN2 + ADA (target 0.8), D2D-CE discriminator conditioning, cAdaIN generator (StudioGAN)'),
 ('logs/TINY_IMAGENET/SNGAN-train-2021_01_15_11_59_43.log','studiogan_tinyimagenet_sngan','Tiny ImageNet',64,'SNGAN (ResNet), StudioGAN'),
 ('logs/TINY_IMAGENET/ProjGAN-train-2021_01_15_11_59_49.log','studiogan_tinyimagenet_projgan','Tiny ImageNet',64,'ProjGAN (ResNet), StudioGAN'),
]
RESUME={
 'logs/AFHQ/StyleGAN2-SPD-ADA-train-2021_10_18_16_01_19.log':"Resumed once (log ~line 2927, 2021-10-20) from G-current-weights-step=150000 = the last evaluated step; steps 150000-152000 were re-trained, no FID step repeats. Log ends at step 200000 although total_steps is 400000 (run cut, not converged by schedule). ",
 'logs/TINY_IMAGENET/DiffAugGAN(P)-train-2021_01_17_04_59_53.log':"Resumed twice: at step 20000 from G-best-weights-step=20000 (best = last evaluated step at that time; steps 20000-21700 re-trained) and at step 150000 from G-current-weights-step=150000; no FID step repeats. ",
 'logs/IMAGENET/ContraGAN256-train-2021_01_25_13_55_18.log':"Resumed twice: at step 84000 from G-current-weights-step=84000 and at step 168000 from G-best-weights-step=168000 (best = last evaluated step); both are the last evaluated checkpoint, so no FID step repeats. ",
}
out=[]
for path,cid,ds,res,model in SEL:
    c,(pts,mom,runs,lines,nimg),t=ps.best_version(path)
    xs=[x for x,_ in pts]
    # keep the strictly increasing prefix; anything after must be trailing post-training re-evaluations
    k=len(xs)
    for i in range(1,len(xs)):
        if xs[i]<=xs[i-1]: k=i; break
    dropped=pts[k:]
    assert all(x<=max(xs[:k]) for x,_ in dropped), path
    keep=[[x,float(v)] for x,v in pts[:k]]
    assert not any(v!=v for _,v in keep)
    er=elapsed_resets(t)
    mt=re.search(r"['\"]total_steps?['\"]:\s*(\d+)",t); tot=mt.group(1) if mt else 'not found'
    assert (er>0)==(path in RESUME), (path,er)
    i=min(range(len(keep)),key=lambda j:keep[j][1])
    notes=(f"Parsed lines '[INFO] <time> > FID score (Step: N, Using {'/'.join(sorted(mom))} moments): V' of {path} at commit {c} "
           f"(log lines {lines[0]}-{lines[k-1] if k-1<len(lines) else lines[-1]}; the 'Best FID score' lines are ignored). One run (one 'Run name' header, checkpoint_folder/ckpt_dir None: from scratch). "
           f"x = generator training step; first evaluation at step {keep[0][0]} (no step-0 evaluation in StudioGAN). "
           + (f"FID of {nimg[0]} generated images (printed in log). " if nimg else "Number of generated images for FID is not printed in this log. ")
           + (f"Dropped {len(dropped)} trailing post-training re-evaluation(s) at step(s) {[x for x,_ in dropped]} (value(s) {[v for _,v in dropped]}), which repeat an earlier step. " if dropped else "")
           + RESUME.get(path, "")
           + f"Minimum {keep[i][1]} at step {keep[i][0]} of {keep[-1][0]}. Reference stats: {'/'.join(sorted(mom))} split. Configured total steps in the logged config: {tot}.")
    out.append(dict(id=cid,source=f'POSTECH-CVLab/PyTorch-StudioGAN:{path}',commit=c,
        metric=f"FID (StudioGAN, PyTorch Inception, vs {'/'.join(sorted(mom))} moments)",x_unit='iteration',dataset=ds,resolution=res,model=model,
        direction='lower_is_better',starts_from='scratch',points=keep,notes=notes))
# BigGAN-PyTorch
BG='/work/.mirror/ajbrock+BigGAN-PyTorch/repo'
p='logs/BigGAN_ch96_bs256x8.jsonl'
c=subprocess.run(['git','-C',BG,'log','-1','--format=%H','--',p],capture_output=True,text=True).stdout.strip()
txt=subprocess.run(['git','-C',BG,'show',f'{c}:{p}'],capture_output=True,text=True).stdout
pts=[]
for l in txt.splitlines():
    if l.strip():
        j=json.loads(l); pts.append([j['itr'],j['FID']])
xs=[x for x,_ in pts]; assert all(a<b for a,b in zip(xs,xs[1:]))
i=min(range(len(pts)),key=lambda j:pts[j][1])
out.append(dict(id='biggan_pytorch_imagenet128',source=f'ajbrock/BigGAN-PyTorch:{p}',commit=c,
    metric='FID (BigGAN-PyTorch inception_utils, PyTorch Inception, 50k samples vs ImageNet train moments)',x_unit='iteration',
    dataset='ImageNet (ILSVRC2012)',resolution=128,model='BigGAN (ch96, batch 256x8 accumulation, EMA), official BigGAN-PyTorch',
    direction='lower_is_better',starts_from='scratch',points=pts,
    notes=(f"All {len(pts)} lines of {p} at commit {c} (key 'FID', x='itr'); IS_mean ignored. Evaluations every 2000 iterations from itr 2000 (first evaluation; no itr-0 eval); "
           f"itr 16000 is missing from the file. The repo's logs/metalog.txt shows experiment 'Jade_BigGAN_B1_bs256x8_fp32' with state itr 137500 and resume=True in the later config, so the run may have been resumed at least once (itr stays continuous). "
           f"Minimum {pts[i][1]} at itr {pts[i][0]} of {pts[-1][0]}; the file ends at itr 138000 (the run's end as published; num_epochs in metalog config is 400/100, so the end is the authors' stop, not a schedule end). metalog.txt config: num_inception_images 50000, test_every 2000, G_lr 1e-4, D_lr 4e-4, EMA from 20000.")))
json.dump(out,open(Path(__file__).resolve().parents[1] / 'heldout_curves.json','w'),indent=1)
for o in out:
    P=o['points']; i=min(range(len(P)),key=lambda j:P[j][1])
    print(f"{o['id']:38s} n={len(P):4d} x={P[0][0]}-{P[-1][0]} best={P[i][1]:.4g}@{P[i][0]} ({(P[i][0])/P[-1][0]:.2f}) {'RESET' if 'resets' in o['notes'] else ''}")
