from twisted.application.service import ServiceMaker

parkd = ServiceMaker(
    "parkd",
    "parkd.tap",
    "parkd: Raft-replicated parking availability (node and camera daemons)",
    "parkd",
)
