"""The examples each subcommand's `--help` ends with, by (program, command).

One table, so a reviewer sees every example at once and a test can check that
each subcommand has some.
"""

from __future__ import annotations

L = "--ledger ssh://pi/srv/ledger.git"

EXAMPLES: dict[tuple[str, str], list[str]] = {
    ("reconciler", "init"): [
        "reconciler init /srv/trainledger/ledger.git",
        "reconciler init /tmp/ledger.git --set fleet.heartbeat_s=1",
    ],
    ("reconciler", "validate"): [
        "reconciler validate manifest.toml",
        "reconciler validate --json manifest.toml | jq .errors",
    ],
    ("reconciler", "schema"): ["reconciler schema manifest > manifest.schema.json"],
    ("reconciler", "install-hooks"): [
        "reconciler install-hooks ~/ledger",
        "sudo reconciler install-hooks --server /srv/trainledger/ledger.git",
    ],
    ("reconciler", "import-seed"): [
        "reconciler import-seed queue.db artifacts/ --ledger /srv/trainledger/ledger.git",
        "reconciler import-seed queue.db artifacts/ --ledger URL --json | jq .unmatched",
    ],
    ("reconciler", "run"): [
        "reconciler run --ledger /srv/trainledger/ledger.git",
        "reconciler run --ledger /srv/ledger.git --metrics-file "
        "/var/lib/node_exporter/textfile/trainledger.prom",
        "reconciler run --ledger /srv/ledger.git --report-dir /var/www/fleet",
        "reconciler --log-format json run --once --ledger /srv/ledger.git",
    ],
    ("reconciler", "status"): [
        f"reconciler status {L}",
        "reconciler status --status failed --json | jq -r '.jobs[].name'",
        "reconciler status --worker gpu1 --model 'xgb*' -o wide",
        "reconciler status 'transformer-*-seed1' --watch 5",
    ],
    ("reconciler", "show"): ["reconciler show transformer-d512-h8-l6-lr3e-4-seed1"],
    ("reconciler", "log"): [
        "reconciler log | head -20",
        "reconciler log job-007 --json --limit 50",
    ],
    ("reconciler", "cancel"): [
        "reconciler cancel job-007",
        "reconciler cancel --status pending --model xgb --dry-run",
        "reconciler cancel 'sweep-lr-*' --as alice",
    ],
    ("reconciler", "requeue"): [
        "reconciler requeue job-007",
        "reconciler requeue --status failed --worker gpu2 --dry-run",
    ],
    ("reconciler", "fsck"): ["reconciler fsck --ledger /srv/ledger.git"],
    ("reconciler", "enroll"): ["reconciler enroll gpu1 --pubkey gpu1.pub --ledger /srv/ledger.git"],
    ("reconciler", "fetch-artifact"): ["reconciler fetch-artifact job-007 ./job-007"],
    ("reconciler", "workers"): [
        "reconciler workers",
        "reconciler workers --json | jq -r '.workers[] | select(.live | not) | .name'",
    ],
    ("reconciler", "health"): [
        "reconciler health || echo \"fleet degraded: exit $?\"",
        "reconciler health --json",
    ],
    ("reconciler", "report"): [
        "reconciler report --out /var/www/fleet",
        "python3 -m http.server -d /var/www/fleet 8080",
    ],
    ("reconciler", "results"): [
        "reconciler results --sort val_loss",
        "reconciler results --model mlp --sort val_auc --desc --json | jq '.rows[0]'",
    ],
    ("reconciler", "logs"): [
        "reconciler logs job-007",
        "reconciler logs job-007 --attempt 2 | tail -50",
        "reconciler logs job-007 -f",
    ],
    ("worker", "run"): [
        "worker run --ledger ssh://pi/srv/ledger.git",
        "worker run --ledger /srv/ledger.git --pass-env 'HF_*' --pass-env WANDB_API_KEY",
        "worker --log-format json run --ledger /srv/ledger.git --slots 2",
        "worker run --ledger /srv/ledger.git --exit-when-idle",
    ],
    ("worker", "capability"): ["worker capability", "worker capability --json"],
    ("worker", "explain"): [f"worker explain {L} --name gpu1"],
}
