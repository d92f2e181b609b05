#!/bin/bash
# ev.sh MODEL NAME FRAMES SEED THREADS [extra flags]
M=$1; N=$2; FR=$3; S=$4; T=$5; shift 5
mkdir -p /tmp/ev_$N
/work/main/build/tools/train_tinyworld --stage eval --out $M --state /tmp/ev_$N --eval-prompts 0 --eval-frames $FR --threads $T --seed 1 --eval-seed $S --eval-guidance 1.5 --recommend-sink 3 --eval-negative swap:square=circle,triangle=circle,circle=square --eval-negative-guidance 1 --eval-context-noise 100 "$@" > /work/runs/ev_${N}.log 2>&1
grep "eval summary" /work/runs/ev_${N}.log | python3 -c "
import json,sys
l=sys.stdin.read(); j=json.loads(l[l.index('{'):])
a=j['all']; h=j['heldout']; b=j['by_prompted_shape']
print('$N', 'overall %.3f heldout %.3f bg %.2f col %.2f shape %.2f dir %.2f | circ %.2f sq %.2f tri %.2f | sqfill %.2f'%(a['overall'],h['overall'],a['background'],a['color'],a['shape'],a['direction'],b['circle']['shape'],b['square']['shape'],b['triangle']['shape'],b['square']['largest_blob_fill']))"
