# Helpers the bench scripts share; sourced, not run.

# Waits until `$1/healthz` answers (10 s).
wait_up() {
  for _ in $(seq 100); do curl -fs "$1/healthz" > /dev/null && return; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}

# Waits until something listens on local port $1 (5 s).
wait_port() {
  for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return; sleep 0.1; done
  echo "nothing listens on $1" >&2; exit 1
}

# CPU milliseconds (user + system) of process $1 so far, 0 once it is gone.
cpu_ms_of() {
  local t; t=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2> /dev/null || echo 0)
  echo $(( t * 1000 / $(getconf CLK_TCK) ))
}

# CPU milliseconds of every Postgres process so far.
postgres_cpu_ms() {
  local p t=0
  for p in $(pgrep -u postgres postgres); do t=$(( t + $(cpu_ms_of "$p") )); done
  echo "$t"
}

# The median of the numbers on standard input, one per line.
median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Drops and creates database $1 on ADMIN_URL's server (a fresh one per run).
fresh_db() {
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" 2> /dev/null
}
