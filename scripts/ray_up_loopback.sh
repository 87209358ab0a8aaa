#!/usr/bin/env bash
# `ray up` with Ray's local provider against sshd on loopback, then a search through it.
# Proves cluster.onprem.yaml's shape end to end on one machine (root, Debian):
#   bash scripts/ray_up_loopback.sh
# Needs: apt-get install openssh-server rsync. Stops ALL Ray processes on this machine at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

key=/root/.ssh/fer_ray_loopback
mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N "" -f "$key"
grep -qf "$key.pub" /root/.ssh/authorized_keys 2>/dev/null || cat "$key.pub" >> /root/.ssh/authorized_keys
pgrep -x sshd >/dev/null || /usr/sbin/sshd -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no

cat > "$work/cluster.yaml" <<YAML
cluster_name: fer-ray-loopback
provider: {type: local, head_ip: 127.0.0.1, worker_ips: []}
auth: {ssh_user: root, ssh_private_key: $key}
min_workers: 0
max_workers: 0
setup_commands: []
head_start_ray_commands:
  - RAY_AUTH_MODE=disabled $repo/.venv/bin/ray start --head --port=6399 --dashboard-host=127.0.0.1 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands: []
YAML

ray=$repo/.venv/bin/ray
"$ray" up -y --no-config-cache "$work/cluster.yaml"
"$ray" exec "$work/cluster.yaml" "cd $repo && RAY_AUTH_MODE=disabled .venv/bin/python -m fer_ray.search \
  --address auto --space smoke --num-samples 4 --max-epochs 2 --synthetic-size 600 \
  --storage $work/storage --name via-ray-up"
"$ray" down -y "$work/cluster.yaml"
"$ray" stop --force  # the local provider's `down` leaves the head's processes running
echo "results: $work/storage/via-ray-up/results.parquet"
