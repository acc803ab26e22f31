# Install a trainledger worker on Windows as a Scheduled Task that starts at boot
# and is restarted when it exits.
#   powershell -ExecutionPolicy Bypass -File scripts\install-worker-windows.ps1 `
#       -Ledger ssh://pi/srv/trainledger/ledger.git [-Name NAME] [-Store ssh://pi/srv/trainledger/store]
# Prints the host's capability first and refuses to install when its self-test fails.
param(
    [Parameter(Mandatory = $true)][string]$Ledger,
    [string]$Name = $env:COMPUTERNAME.ToLower(),
    [string]$Store = "",
    [string]$Python = "python"
)
$ErrorActionPreference = "Stop"
$Root = Split-Path -Parent $PSScriptRoot
$Venv = Join-Path $Root ".venv"
if (-not (Test-Path (Join-Path $Venv "Scripts\python.exe"))) {
    & $Python -m venv $Venv
    & (Join-Path $Venv "Scripts\python.exe") -m pip install --quiet "torch==2.13.0"
    & (Join-Path $Venv "Scripts\python.exe") -m pip install --quiet -e "$Root[train]"
}
$Worker = Join-Path $Venv "Scripts\worker.exe"
Write-Host "== capability of $env:COMPUTERNAME"
& $Worker capability
if ($LASTEXITCODE -ne 0) { throw "capability self-test failed; not installing" }
$StateDir = Join-Path $env:ProgramData "trainledger\worker-$Name"
New-Item -ItemType Directory -Force -Path $StateDir | Out-Null
$Args = "run --ledger $Ledger --name $Name --state-dir `"$StateDir`""
if ($Store) { $Args += " --store $Store" }
$Action = New-ScheduledTaskAction -Execute $Worker -Argument $Args -WorkingDirectory $StateDir
$Trigger = New-ScheduledTaskTrigger -AtStartup
$Settings = New-ScheduledTaskSettingsSet -RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
Register-ScheduledTask -TaskName "trainledger-worker" -Action $Action -Trigger $Trigger `
    -Settings $Settings -User "SYSTEM" -RunLevel Highest -Force | Out-Null
Start-ScheduledTask -TaskName "trainledger-worker"
Write-Host "installed Scheduled Task trainledger-worker; enroll this host on the Pi with:"
Write-Host "  reconciler enroll $Name --pubkey <this host's ssh public key>"
