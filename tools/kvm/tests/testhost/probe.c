/*
 * Time a loop of guest code at CPL0 (real mode) in a fresh VM on /dev/kvm.
 * Prints "hlt <nanoseconds>" for the faster of two runs, or
 * "exit <reason> <nanoseconds>" if the guest stopped for anything else.
 * Built from source at run time so the ioctl numbers come from <linux/kvm.h>.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

static const unsigned char code[] = {
	0x66, 0xb9, 0xa0, 0x86, 0x01, 0x00,	/* mov $100000, %ecx */
	0x66, 0x49,				/* 1: dec %ecx */
	0x75, 0xfc,				/* jnz 1b */
	0xf4,					/* hlt */
};

static int fail(const char *what)
{
	perror(what);
	return 2;
}

int main(void)
{
	const size_t size = 0x10000;
	struct kvm_userspace_memory_region region = { .memory_size = size };
	struct kvm_sregs sregs;
	struct kvm_run *run;
	long long best = -1;
	int kvm, vm, cpu, i;
	void *mem;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return fail("mmap");
	memcpy(mem, code, sizeof(code));
	region.userspace_addr = (unsigned long)mem;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail("KVM_SET_USER_MEMORY_REGION");
	cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (cpu < 0)
		return fail("KVM_CREATE_VCPU");
	run = mmap(NULL, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE,
		   MAP_SHARED, cpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap kvm_run");
	for (i = 0; i < 2; i++) {
		struct kvm_regs regs = { .rip = 0, .rflags = 2 };
		struct timespec t0, t1;
		long long ns;

		if (ioctl(cpu, KVM_GET_SREGS, &sregs) < 0)
			return fail("KVM_GET_SREGS");
		sregs.cs.base = 0;
		sregs.cs.selector = 0;
		if (ioctl(cpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(cpu, KVM_SET_REGS, &regs) < 0)
			return fail("KVM_SET_*REGS");
		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (ioctl(cpu, KVM_RUN, 0) < 0)
			return fail("KVM_RUN");
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + t1.tv_nsec - t0.tv_nsec;
		if (run->exit_reason != KVM_EXIT_HLT) {
			printf("exit %u %lld\n", run->exit_reason, ns);
			return 0;
		}
		if (best < 0 || ns < best)
			best = ns;
	}
	printf("hlt %lld\n", best);
	return 0;
}
