/*
 * The lower bound for lkvm's exit handling: the least a KVM user can do
 * per port-I/O exit.  Runs the same flat guest as lkvm (loaded at
 * 1000:0000, real mode, in-kernel irqchip and PIT) and returns to KVM_RUN
 * at once on every exit until the i8042 reset.  Prints the exit count
 * and the seconds spent.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE	(16 << 20)
#define LOAD_ADDR	0x10000

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	struct kvm_userspace_memory_region region = { 0 };
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = 0, .rsp = 0x8000, .rflags = 2 };
	struct timespec t0, t1;
	unsigned long exits = 0;
	struct kvm_run *run;
	int kvm, vm, vcpu, fd;
	ssize_t n;
	char *ram;

	if (argc != 2) {
		fprintf(stderr, "usage: %s GUEST.bin\n", argv[0]);
		return 2;
	}
	kvm = open("/dev/kvm", O_RDWR);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0 || ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0 ||
	    ioctl(vm, KVM_CREATE_IRQCHIP) < 0 || ioctl(vm, KVM_CREATE_PIT2, &pit) < 0)
		die("vm");
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fd = open(argv[1], O_RDONLY);
	if (ram == MAP_FAILED || fd < 0)
		die("guest");
	n = read(fd, ram + LOAD_ADDR, RAM_SIZE - LOAD_ADDR);
	if (n <= 0)
		die("read");
	region.memory_size = RAM_SIZE;
	region.userspace_addr = (unsigned long)ram;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("memory");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	run = mmap(NULL, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE,
		   MAP_SHARED, vcpu, 0);
	if (vcpu < 0 || run == MAP_FAILED || ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("vcpu");
	sregs.cs.selector = sregs.ds.selector = sregs.es.selector = 0x1000;
	sregs.fs.selector = sregs.gs.selector = sregs.ss.selector = 0x1000;
	sregs.cs.base = sregs.ds.base = sregs.es.base = LOAD_ADDR;
	sregs.fs.base = sregs.gs.base = sregs.ss.base = LOAD_ADDR;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("regs");

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		exits++;
		if (run->exit_reason != KVM_EXIT_IO)
			break;
		if (run->io.port == 0x64 && *((char *)run + run->io.data_offset) == (char)0xfe)
			break;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%lu %.6f\n", exits, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
