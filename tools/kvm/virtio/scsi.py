"""virtio-scsi: a SCSI host adapter with one target (0) whose logical
units are disk images, served by lkvm's own SCSI target (scsi/); or, as
kvmtool's -d scsi:WWPN:TPGT, an adapter the kernel's vhost-scsi serves
for a target set up in configfs (VhostScsi).

Queue 0 takes task management, queue 1 holds the driver's buffers for
events (none are sent: no hot plug), queue 2 the commands.  A command's
device-readable part is the request header (LUN, tag, the CDB field of
the size the config says) then data-out; its device-writable part is the
response header (sense of the size the config says) then data-in.  The
driver may set those two sizes; they are bounded here, so a request
header never costs more than a few hundred bytes to read.
"""

from include.uapi import ffi, lib
from kvm.cstruct import packer, to_bytes
from scsi import sbc
from scsi.command import Overrun
from scsi.sense import GOOD
from scsi.target import MAX_LUNS, Lun, Result, Target
from virtio.device import DEFAULT_QUEUE_SIZE, VirtioDevice
from virtio.iov import scatter, split, take
from virtio.queue import Chain, Virtqueue
from virtio.vhost import Handover, Vhost

CONTROL, EVENT, REQUEST = 0, 1, 2
CDB_OFFSET = ffi.offsetof("struct virtio_scsi_cmd_req", "cdb")
SENSE_OFFSET = ffi.offsetof("struct virtio_scsi_cmd_resp", "sense")
RESP = packer("struct virtio_scsi_cmd_resp")
TMF_REQ = packer("struct virtio_scsi_ctrl_tmf_req")
TMF_REQ_SIZE = ffi.sizeof("struct virtio_scsi_ctrl_tmf_req")
AN_REQ_SIZE = ffi.sizeof("struct virtio_scsi_ctrl_an_req")
AN_RESP = packer("struct virtio_scsi_ctrl_an_resp")
TYPE_SIZE = ffi.sizeof("__u32")
LUN_SIZE = ffi.sizeof(dict(ffi.typeof("struct virtio_scsi_cmd_req").fields)["lun"].type)
LUN_OFFSET = ffi.offsetof("struct virtio_scsi_ctrl_tmf_req", "lun")
SENSE_SIZE_AT = ffi.offsetof("struct virtio_scsi_config", "sense_size")
CDB_SIZE_AT = ffi.offsetof("struct virtio_scsi_config", "cdb_size")
MAX_CDB = 260               # SPC-4's longest (variable-length) CDB
MAX_SENSE = 252             # SPC-4's longest sense data
MAX_WWPN = ffi.sizeof(dict(ffi.typeof("struct vhost_scsi_target").fields)["vhost_wwpn"].type)
MAX_TPGT = 0xFFFF
VHOST_MAX_LUN = 16383       # what Linux's SAM LUN scan can address; the target has its own
VHOST_MAX_TARGET = 255      # vhost-scsi's targets are the WWPN's TPGs, by their tags
SEG_MAX = DEFAULT_QUEUE_SIZE - 2
EVENT_INFO_SIZE = ffi.sizeof("struct virtio_scsi_event")
NO_RESULT = Result(GOOD)
TMF_KNOWN = range(lib.VIRTIO_SCSI_T_TMF_ABORT_TASK, lib.VIRTIO_SCSI_T_TMF_QUERY_TASK_SET + 1)


def address(lun: bytes) -> tuple[bool, int | None]:
    """(whether the target exists, the LUN number or None) of a virtio
    LUN field: 1, the target, then one level of peripheral or flat
    addressing, as Linux's virtio_scsi fills it in."""
    if lun[0] != 1 or lun[1] != 0:
        return False, None
    if lun[2] >> 6 > 1 or any(lun[4:]):
        return True, None
    return True, (lun[2] & 0x3F) << 8 | lun[3]


class Scsi(VirtioDevice):
    device_id = lib.VIRTIO_ID_SCSI
    name = "scsi"
    num_queues = 3

    def __init__(self, mem: object, luns: list[Lun]) -> None:
        if not 0 < len(luns) <= MAX_LUNS:
            raise ValueError(f"a virtio-scsi adapter has 1 to {MAX_LUNS} LUNs")
        super().__init__(mem)
        self.target = Target(luns)
        self.config = bytearray(to_bytes(
            "struct virtio_scsi_config", num_queues=1, seg_max=SEG_MAX,
            max_sectors=sbc.MAX_TRANSFER, cmd_per_lun=DEFAULT_QUEUE_SIZE,
            event_info_size=EVENT_INFO_SIZE,
            sense_size=lib.VIRTIO_SCSI_SENSE_DEFAULT_SIZE,
            cdb_size=lib.VIRTIO_SCSI_CDB_DEFAULT_SIZE, max_channel=0, max_target=0,
            max_lun=len(luns) - 1))
        self.defaults = bytes(self.config)
        self._sizes()
        self.handlers = {CONTROL: self._control, REQUEST: self._command}

    # The driver sets the sizes of the CDB and sense fields; every
    # command needs them, so they are kept as numbers too.
    def _field(self, at: int) -> int:
        return int.from_bytes(self.config[at:at + 4], "little")

    def _sizes(self) -> None:
        self.sense_size = self._field(SENSE_SIZE_AT)
        self.req_size = CDB_OFFSET + self._field(CDB_SIZE_AT)
        self.resp_size = SENSE_OFFSET + self.sense_size

    def write_config(self, offset: int, size: int, value: int) -> None:
        limit = {SENSE_SIZE_AT: MAX_SENSE, CDB_SIZE_AT: MAX_CDB}.get(offset)
        if limit is not None and size == 4 and value <= limit:
            self.config[offset:offset + 4] = value.to_bytes(4, "little")
            self._sizes()

    def on_reset(self) -> None:
        self.config[:] = self.defaults
        self._sizes()

    def process(self, index: int, queue: Virtqueue) -> None:
        handler = self.handlers.get(index)
        if handler is None:
            return  # EVENT: its buffers wait for events that never come
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, handler(chain))

    def _command(self, chain: Chain) -> int:
        """Carry out one command; the bytes written to the guest."""
        resp_size, req_size = self.resp_size, self.req_size
        if chain.writable_size < resp_size:
            return 0  # nowhere to say what happened: hand it back untouched
        resp, data_in = split(chain.writable, resp_size)
        hdr, data_out = take(chain.readable, req_size)
        if hdr is None:
            return self._respond(resp, lib.VIRTIO_SCSI_S_FAILURE)
        exists, lun = address(hdr[:LUN_SIZE])
        if not exists:
            return self._respond(resp, lib.VIRTIO_SCSI_S_BAD_TARGET)
        out_size, in_size = chain.readable_size - req_size, chain.writable_size - resp_size
        try:
            result = self.target.execute(lun, hdr[CDB_OFFSET:], data_out, data_in, out_size,
                                         in_size)
        except Overrun:
            return self._respond(resp, lib.VIRTIO_SCSI_S_OVERRUN)
        # No bidirectional commands (VIRTIO_SCSI_F_INOUT): the residual
        # is of whichever buffers the command has.
        residual = in_size + out_size - result.moved
        return self._respond(resp, lib.VIRTIO_SCSI_S_OK, result, residual) + result.written

    def _respond(self, resp: list[memoryview], response: int, result: Result = NO_RESULT,
                 residual: int = 0) -> int:
        sense = result.sense[:self.sense_size]
        data = RESP.pack(len(sense), min(residual, 0xFFFFFFFF), 0, result.status, response)
        scatter(resp, (data + sense).ljust(self.resp_size, b"\0"))
        return self.resp_size

    # Task management: commands finish before the next is read, so there
    # is never one in flight to abort or reset.
    def _control(self, chain: Chain) -> int:
        kind, _ = take(chain.readable, TYPE_SIZE)
        if kind is None:
            return 0
        kind = int.from_bytes(kind, "little")
        if kind == lib.VIRTIO_SCSI_T_TMF:
            return self._tmf(chain)
        if kind in (lib.VIRTIO_SCSI_T_AN_QUERY, lib.VIRTIO_SCSI_T_AN_SUBSCRIBE):
            return self._an(chain)
        return 0

    def _tmf(self, chain: Chain) -> int:
        req, _ = take(chain.readable, TMF_REQ_SIZE)
        if req is None or not chain.writable_size:
            return 0
        _, subtype, _ = TMF_REQ.unpack(req)
        exists, _ = address(req[LUN_OFFSET:LUN_OFFSET + LUN_SIZE])
        if not exists:
            response = lib.VIRTIO_SCSI_S_BAD_TARGET
        elif subtype in TMF_KNOWN:
            response = lib.VIRTIO_SCSI_S_OK     # the spec's FUNCTION COMPLETE
        else:
            response = lib.VIRTIO_SCSI_S_FUNCTION_REJECTED
        return scatter(chain.writable, bytes((response,)))

    def _an(self, chain: Chain) -> int:
        """No asynchronous events are reported, so none is ever granted."""
        req, _ = take(chain.readable, AN_REQ_SIZE)
        if req is None or chain.writable_size < AN_RESP.size:
            return 0
        return scatter(chain.writable, AN_RESP.pack(0, lib.VIRTIO_SCSI_S_OK))

    def close(self) -> None:
        self.target.close()


class VhostScsi(Handover, VirtioDevice):
    """An adapter whose three queues the kernel's vhost-scsi serves once
    the driver is ready, for the LIO target the user set up in configfs
    (/sys/kernel/config/target/vhost/WWPN/tpgt_TPGT): its LUNs, their
    data and the sense it reports are all the kernel's.  vhost-scsi
    expects the default CDB and sense sizes, so the driver cannot change
    them here."""
    device_id = lib.VIRTIO_ID_SCSI
    name = "scsi"
    num_queues = 3
    vhost_rings = 3             # control, event and requests

    def __init__(self, mem: object, wwpn: str, tpgt: int, vhost: Vhost) -> None:
        raw = wwpn.encode()
        if not 0 < len(raw) < MAX_WWPN or b"\0" in raw or not 0 <= tpgt <= MAX_TPGT:
            raise ValueError(f"a vhost-scsi WWPN has 1 to {MAX_WWPN - 1} bytes and a TPGT "
                             f"is at most {MAX_TPGT}")
        super().__init__(mem)
        self.vhost = vhost
        self.endpoint = ffi.new("struct vhost_scsi_target *", {
            "abi_version": lib.VHOST_SCSI_ABI_VERSION, "vhost_wwpn": raw, "vhost_tpgt": tpgt})
        self.config = bytearray(to_bytes(
            "struct virtio_scsi_config", num_queues=1, seg_max=SEG_MAX, max_sectors=0xFFFF,
            cmd_per_lun=DEFAULT_QUEUE_SIZE, event_info_size=EVENT_INFO_SIZE,
            sense_size=lib.VIRTIO_SCSI_SENSE_DEFAULT_SIZE,
            cdb_size=lib.VIRTIO_SCSI_CDB_DEFAULT_SIZE, max_channel=0,
            max_target=VHOST_MAX_TARGET, max_lun=VHOST_MAX_LUN))

    def vhost_serve(self, on: bool) -> None:
        request = lib.VHOST_SCSI_SET_ENDPOINT if on else lib.VHOST_SCSI_CLEAR_ENDPOINT
        self.vhost.ioctl(request, self.endpoint)

    def process(self, index: int, queue: Virtqueue) -> None:
        """Kicks reach lkvm only before the hand-over or after a refusal:
        the buffers wait for vhost, or for the driver's reset."""
