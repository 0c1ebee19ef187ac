#!/bin/sh
# Builds the tiny initramfs that qemu-groups.mjs boots: busybox, lspci (with its shared
# libraries and pci.ids) and an /init that prints `lspci -nn -vvv` and the IOMMU groups between
# markers on the second serial port (ttyS1), then powers off. The IOMMU driver and the PCIe port
# driver are built into Debian's kernel and lspci needs no module, so nothing is loaded by default.
# Given a kernel release, the nvme driver and its dependencies for that kernel are packed too; they
# are loaded only when the kernel command line holds `qg.sriov`, and then every function with
# SR-IOV gets all its VFs enabled (sriov_numvfs = sriov_totalvfs) before lspci runs.
# Usage: build-initramfs.sh OUT.cpio.gz [KERNEL_RELEASE]
set -eu
out=${1:?usage: build-initramfs.sh OUT.cpio.gz [KERNEL_RELEASE]}
release=${2:-}
bb=/bin/busybox
[ -x "$bb" ] && "$bb" --list >/dev/null 2>&1 || { echo "need busybox-static (/bin/busybox)" >&2; exit 1; }
command -v lspci >/dev/null || { echo "need pciutils (lspci)" >&2; exit 1; }
command -v cpio >/dev/null || { echo "need cpio" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/usr/share/misc" "$root/tmp"
cp "$bb" "$root/bin/busybox"
lspci=$(command -v lspci)
cp "$lspci" "$root/bin/lspci"
# lspci's shared libraries and the dynamic loader, at the paths ldd names.
ldd "$lspci" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /usr/share/misc/pci.ids "$root/usr/share/misc/pci.ids"
mkdir -p "$root/modules"
: >"$root/modules/order"
if [ -n "$release" ] && [ -d "/lib/modules/$release" ]; then
  modprobe -S "$release" --show-depends nvme 2>/dev/null | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    name=$(basename "$ko" | sed 's/\.ko.*$//')
    grep -qx "$name.ko" "$root/modules/order" && continue
    case "$ko" in
      *.xz) xz -dc "$ko" >"$root/modules/$name.ko" ;;
      *.zst) zstd -dqc "$ko" >"$root/modules/$name.ko" ;;
      *.gz) gzip -dc "$ko" >"$root/modules/$name.ko" ;;
      *) cp "$ko" "$root/modules/$name.ko" ;;
    esac
    echo "$name.ko" >>"$root/modules/order"
  done
fi
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
out=/dev/ttyS1
stty -F $out raw -echo 2>/dev/null
{
  if grep -qw 'qg.sriov' /proc/cmdline; then
    echo "@@QG-SRIOV-BEGIN"
    for m in $(cat /modules/order); do insmod /modules/$m 2>&1; done
    sleep 1
    for d in /sys/bus/pci/devices/*; do
      [ -r $d/sriov_totalvfs ] || continue
      n=$(cat $d/sriov_totalvfs)
      [ "$n" -gt 0 ] 2>/dev/null || continue
      echo "${d##*/}: enabling $n VFs (driver $(basename $(readlink $d/driver 2>/dev/null) 2>/dev/null))"
      echo $n >$d/sriov_numvfs 2>&1
      echo "${d##*/}: sriov_numvfs=$(cat $d/sriov_numvfs)"
    done
    sleep 1
    echo "@@QG-SRIOV-END"
  fi
  echo "@@QG-KERNEL $(uname -r)"
  echo "@@QG-CMDLINE $(cat /proc/cmdline)"
  echo "@@QG-LSPCI-BEGIN"
  lspci -nn -vvv 2>/tmp/lspci.err
  # The shared fixtures end with this line too (their generator's): parsers must skip it.
  echo
  echo "UPTIME_AT_END $(cut -d' ' -f1 /proc/uptime)"
  echo "@@QG-LSPCI-END"
  echo "@@QG-LSPCI-STDERR-BEGIN"
  cat /tmp/lspci.err
  echo "@@QG-LSPCI-STDERR-END"
  echo "@@QG-GROUPS-BEGIN"
  for d in /sys/kernel/iommu_groups/*/devices/*; do
    [ -e "$d" ] && echo "${d#/sys/kernel/iommu_groups/}"
  done
  echo "@@QG-GROUPS-END"
  echo "@@QG-DONE"
} >$out 2>&1
sync
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"
