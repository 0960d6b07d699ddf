"""Many machines, one job: each node's ``jitc supervise`` and the one planner of the job.

    topology.py  what the torchrun command says about the nodes (how many, which one is
                 this, where the coordination store lives)
    channel.py   the supervisors' exchange through torch's TCPStore (queues, heartbeats)
    transfer.py  a published snapshot's files fetched from the node that holds them
    wire.py      reports and commands as strict JSON (nothing decoded can run code)
    router.py    the head: routes the planner's commands to nodes, merges their answers
"""
