"""`engine demo`: the example rules, a local webhook receiver, the evaluation service and a few
simulated training runs, in one process (the command itself is engine/cli/demo.py).

    receiver.py   an HTTP receiver on 127.0.0.1 that checks X-Automation-Signature, as yours would
    rules.py      the example rules of rules/, rewritten for the demo (own names, project, receiver)
    scenario.py   the simulated runs, logged with the SDK (engine.init, run.log, engine.Api)
"""
