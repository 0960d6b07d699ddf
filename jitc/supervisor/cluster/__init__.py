"""Many machines, one job: each node's ``jitc supervise`` and the one planner of the job.

    topology.py  what the torchrun command says about the nodes (how many, which one is
                 this, where the coordination store lives)
    channel.py   the supervisors' exchange through torch's TCPStore (queues, heartbeats)
    wire.py      reports and commands as strict JSON (nothing decoded can run code)
    router.py    the head: routes the planner's commands to nodes, merges their answers
    head.py      the head node's brain: the planner behind the router, fed by the channel
    member.py    a member node's brain: relays its ranks' reports, carries out the head's
    transfer.py  a published snapshot's files fetched from the node that holds them
    node.py      this node's setup: channel, file server, and which brain

docs/internals.md, "Several nodes", has the picture.
"""
