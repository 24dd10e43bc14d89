"""Crash-safety harness, shared by the tests that kill things.

* :mod:`tests.crash.supervisor`: runs ``lienthong worker`` subprocesses with a
  given environment (fault injection included), restarts the ones that died
  by SIGKILL, stops them with SIGTERM, and reads from their logs how each
  one ended and what it did.
* :mod:`tests.crash.load`: a workload signed before the run (documents to
  several recipients, a few tampered ones, the status each recipient will
  report), and the agencies' systems that publish it during the run: the
  senders submit, each recipient's application reads its inbox through an
  :class:`~exchange.client.AgencyClient` and reports its status.
* :mod:`tests.crash.checks`: the reconciliation after a run, in the
  database, on the broker and in every agency's application, and the audit
  command when it exists.
"""
