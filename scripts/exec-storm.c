/*
 * Exec storm generator for the sensor benchmark.
 *
 * Usage: exec-storm TAG RATE SECONDS [PROGRAM]
 * Executes PROGRAM (default /bin/busybox) as `true storm-TAG-N` for
 * N = 0, 1, ... at RATE execs per second (0 = as fast as possible) for
 * SECONDS, reaping children without blocking, then prints the children
 * started, the spawn failures and the elapsed seconds. A static busybox keeps
 * each exec cheap, so the generator is not the bottleneck. Built statically by
 * scripts/bench-exec-storm.sh so it also runs in a FROM-scratch container.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reap(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: exec-storm TAG RATE SECONDS [PROGRAM]\n");
		return 2;
	}
	const char *tag = argv[1];
	double rate = atof(argv[2]);
	double seconds = atof(argv[3]);
	char arg[128];
	const char *program = argc == 5 ? argv[4] : "/bin/busybox";
	char *child_argv[] = { "true", arg, NULL };
	unsigned long started = 0, failed = 0;
	double start = now_seconds();

	for (;;) {
		double elapsed = now_seconds() - start;
		if (elapsed >= seconds)
			break;
		if (rate > 0 && started >= (unsigned long)(rate * elapsed)) {
			struct timespec pause = { 0, 200 * 1000 };
			nanosleep(&pause, NULL);
			reap();
			continue;
		}
		snprintf(arg, sizeof(arg), "storm-%s-%lu", tag, started);
		pid_t pid;
		/* posix_spawn uses CLONE_VFORK, the cheapest way to start a child. */
		if (posix_spawn(&pid, program, NULL, NULL, child_argv, environ) == 0)
			started++;
		else
			failed++;
		if ((started & 63) == 0)
			reap();
	}
	while (wait(NULL) > 0 || errno == EINTR)
		;
	printf("%lu %lu %.3f\n", started, failed, now_seconds() - start);
	return 0;
}
