/*
 * lkvm's guest init: what /virt/init runs as PID 1 on a rootfs made by
 * 'lkvm setup'.  It mounts the host's files and the kernel's filesystems,
 * makes the console the shell's controlling terminal, runs the shell (or
 * the sandbox script), and reboots when that ends, which ends lkvm.
 *
 * lkvm passes two settings as init's environment (the kernel hands
 * unknown name=value parameters to init that way):
 *   lkvm_sandbox=PATH  the script to run instead of /bin/sh
 *   lkvm_status=PATH   where to write its exit status, for 'lkvm sandbox'
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct mnt {
	const char *source, *target, *type;
	unsigned long flags;
	const char *data;
};

/* The host's root first: /bin, /lib and friends are symlinks into it. */
static const struct mnt mounts[] = {
	{ "hostfs", "/host", "9p", MS_RDONLY, "trans=virtio,version=9p2000.L" },
	{ "sysfs", "/sys", "sysfs", 0, NULL },
	{ "proc", "/proc", "proc", 0, NULL },
	{ "devtmpfs", "/dev", "devtmpfs", 0, NULL },
	{ "devpts", "/dev/pts", "devpts", 0, NULL },
	{ "tmpfs", "/run", "tmpfs", 0, NULL },
};

static void mount_all(void)
{
	for (size_t i = 0; i < sizeof(mounts) / sizeof(mounts[0]); i++) {
		const struct mnt *m = &mounts[i];

		mkdir(m->target, 0755);
		if (mount(m->source, m->target, m->type, m->flags, m->data) < 0 && errno != EBUSY)
			fprintf(stderr, "init: mount %s on %s: %s\n", m->source, m->target,
				strerror(errno));
	}
}

/* A session of its own with the console as its terminal, so job control
 * and Ctrl-C work in the shell. */
static void take_console(void)
{
	setsid();
	if (ioctl(STDIN_FILENO, TIOCSCTTY, 1) < 0)
		fprintf(stderr, "init: no controlling terminal: %s\n", strerror(errno));
}

static int run(const char *program)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return 127;
	if (pid == 0) {
		char *argv[] = { (char *)program, NULL };

		take_console();
		execv(program, argv);
		fprintf(stderr, "init: %s: %s\n", program, strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 127;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void write_status(const char *path, int status)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "init: %s: %s\n", path, strerror(errno));
		return;
	}
	fprintf(f, "%d\n", status);
	fclose(f);
}

int main(void)
{
	const char *sandbox = getenv("lkvm_sandbox");
	const char *status_path = getenv("lkvm_status");
	int status;

	mount_all();
	setenv("HOME", "/virt/home", 1);
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	unsetenv("lkvm_sandbox");
	unsetenv("lkvm_status");

	status = run(sandbox ? sandbox : "/bin/sh");
	if (status_path)
		write_status(status_path, status);

	sync();
	reboot(RB_AUTOBOOT);
	return 0;
}
