# Enroll a Windows host: its worker runs inside WSL2 (where CUDA works and the
# Linux process model the trainers need holds), started at boot by a Scheduled
# Task that restarts it when it exits. A worker started natively on Windows
# refuses to run (see docs/operators.md, "Windows hosts").
#   powershell -ExecutionPolicy Bypass -File install-worker-windows.ps1 `
#       -Wheel .\trainledger-0.1.0-py3-none-any.whl -Ledger ssh://trainledger@pi/srv/trainledger/ledger.git `
#       [-Name NAME] [-Distro Debian] [-Extras train] [-Slots 1]
# Run as Administrator. Idempotent: a second run changes nothing it does not have to.
param(
    [Parameter(Mandatory = $true)][string]$Ledger,
    [Parameter(Mandatory = $true)][string]$Wheel,
    [string]$Name = $env:COMPUTERNAME.ToLower(),
    [string]$Distro = "Debian",
    [string]$Extras = "train",
    [int]$Slots = 1
)
$ErrorActionPreference = "Stop"
function Say($text) { Write-Host "install-worker-windows: $text" }

# 1. WSL2 and the distribution
$distros = (& wsl.exe --list --quiet 2>$null) -replace "`0", "" | Where-Object { $_ }
if ($LASTEXITCODE -ne 0 -or -not ($distros -contains $Distro)) {
    throw "WSL2 with the $Distro distribution is needed: run 'wsl --install -d $Distro', reboot, finish its first start, then run this script again"
}
$version = (& wsl.exe --list --verbose) -replace "`0", "" | Select-String -Pattern "\s$Distro\s+\S+\s+(\d)"
if ($version -and $version.Matches[0].Groups[1].Value -ne "2") {
    throw "$Distro runs under WSL 1: 'wsl --set-version $Distro 2' first (WSL 1 has no CUDA and no Linux process model)"
}
Say "WSL2 distribution $Distro found"

# 2. the wheel and the Linux install script, copied into the distribution
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$script = Join-Path $here "install-worker.sh"
if (-not (Test-Path $script)) { throw "install-worker.sh must sit beside this script ($here)" }
$wslWheel = (& wsl.exe -d $Distro -- wslpath -a ((Resolve-Path $Wheel).Path -replace '\\', '/')).Trim()
$wslScript = (& wsl.exe -d $Distro -- wslpath -a ($script -replace '\\', '/')).Trim()
& wsl.exe -d $Distro -u root -- sh -c "mkdir -p /opt/trainledger-setup && cp '$wslWheel' '$wslScript' /opt/trainledger-setup/ && chmod 0755 /opt/trainledger-setup/install-worker.sh"
if ($LASTEXITCODE -ne 0) { throw "could not copy the wheel and install-worker.sh into $Distro" }

# 3. the worker inside WSL, as on any Linux host (no systemd unit started: the task starts it)
$wheelName = Split-Path -Leaf $Wheel
& wsl.exe -d $Distro -u root -- env TL_START=0 /opt/trainledger-setup/install-worker.sh `
    --wheel "/opt/trainledger-setup/$wheelName" --name $Name --ledger $Ledger `
    --extras $Extras --slots $Slots --unit-dir /opt/trainledger-setup/units
if ($LASTEXITCODE -ne 0) { throw "install-worker.sh failed inside $Distro (see above)" }

# 4. a Scheduled Task that runs the worker inside WSL at boot and restarts it; the
#    launcher install-worker.sh wrote runs what the systemd unit would, as its user
$action = New-ScheduledTaskAction -Execute "wsl.exe" `
    -Argument "-d $Distro -u root -- /opt/trainledger/bin/trainledger-worker-start"
$trigger = New-ScheduledTaskTrigger -AtStartup
$settings = New-ScheduledTaskSettingsSet -RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
$existing = Get-ScheduledTask -TaskName "trainledger-worker" -ErrorAction SilentlyContinue
Register-ScheduledTask -TaskName "trainledger-worker" -Action $action -Trigger $trigger `
    -Settings $settings -User "SYSTEM" -RunLevel Highest -Force | Out-Null
if ($existing) { Say "Scheduled Task trainledger-worker updated" }
else { Say "Scheduled Task trainledger-worker registered (starts the worker in $Distro at boot)" }
Start-ScheduledTask -TaskName "trainledger-worker"
Say "started; enroll the key printed above on the Pi, as for any host"
