# Sourced by device_sweep.sh and device_serve.sh, with $dir set: the wheels installed once
# per machine (.whl holds bitsandbytes cut to its CUDA 13.0 library by slim_wheel.py: the
# whole wheel, 41 MiB, no longer fits beside the working tree in a call's 64 MiB), and `follow NAME [SECONDS]`, which waits for a background run in $dir to
# write NAME.rc and shows the end of its log.
mkdir -p "$dir"
if [ ! -d /tmp/site/bitsandbytes ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# Textual and its pure-Python dependencies (the image has none), for the live app on the
# device (observer_effect.py --live); carried only when needed (carry [".whl", ".whl-tui"]).
if [ -d .whl-tui ] && [ ! -d /tmp/site/textual ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-tui/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
follow() {
  local name=$1 deadline=$((SECONDS + ${2:-540}))
  while [ $SECONDS -lt $deadline ]; do
    if [ -f "$dir/$name.rc" ]; then
      echo "== $name ended with exit code $(cat "$dir/$name.rc")"; tail -n 40 "$dir/$name.log"; return 0
    fi
    sleep 5
  done
  echo "== $name still running"; tail -n 5 "$dir/$name.log"
}
