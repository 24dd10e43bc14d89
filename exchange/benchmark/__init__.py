"""``lienthong bench``: the real pipeline under load, next to the limits measured in the same run.

In a vhost and a database of its own (created at the start, deleted at the
end, so it never touches a real exchange), the benchmark registers agencies
on the four levels, signs every package before any clock starts, and runs:

1. **verify only**: bare ``signxml`` verification of the same packages in a
   process pool of as many processes as cores (the least a verifying
   exchange must spend on this machine);
2. **pass-through**: the same messages over the same queues, moved by
   trivial consumers in as many processes as there are workers
   (``lienthong.work`` to the recipient's inbox and a receipt to the
   sender's status queue, with confirms and acks, no checks, no database);
3. **sustained**: the same messages through real ``lienthong worker``
   processes, published as fast as the broker confirms them; throughput is
   messages over the time from the first publish to the last message
   having both its inbox delivery and its receipt;
4. **latency**: more messages at a fixed offered load (by default half the
   sustained throughput), each timed from its publish to the later of its
   delivery and its receipt;
5. **fairness** (only when asked): one agency floods while another sends a
   few at a fixed load, with the workers' fair share and without
   (:mod:`exchange.benchmark.fairness`);
6. **backlog** (only when asked): messages published with no worker
   running, so that they wait in ``lienthong.work``, then drained by
   workers started afterwards; throughput is messages over the time from
   the first worker ready to the last message done.

``--phases`` chooses among them; ``--duration`` turns the sustained run into
one at a fixed offered load for a given time (a long run, to watch memory).

Fast consumers (guest in the bench vhost, no acks) read every inbox and
status queue; every time is taken in this one process, so no clocks need to
agree. CPU and peak memory of each worker process come from ``/proc``, and
its resident memory is sampled every few seconds during the sustained run
and the drain.
"""
