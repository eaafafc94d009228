/* The pod sandbox's process (the "pause" container) for the real node of the tests: it
 * holds the pod's namespaces, reaps orphaned children, and exits on TERM or INT. Built
 * static by hack/real-node (no image registry here). */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
