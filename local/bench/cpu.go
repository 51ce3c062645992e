package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The CPU time a process spent, from /proc/<pid>/stat: utime and stime (its
// own) and cutime and cstime (its children's, once it waited for them), in
// clock ticks. Linux reports them in USER_HZ, which is 100 on every
// architecture Go supports there.
const clockTick = 10 * time.Millisecond

type procStat struct {
	pid, ppid int
	comm      string
	own       time.Duration // utime + stime
	cpu       time.Duration // own + cutime + cstime
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// comm is in parentheses and may hold spaces or parentheses itself.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); utime..cstime are fields 14..17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	s := procStat{pid: pid, comm: string(b[open+1 : end])}
	if s.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, err
	}
	for i, v := range f[11:15] {
		ticks, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return procStat{}, err
		}
		s.cpu += time.Duration(ticks) * clockTick
		if i < 2 {
			s.own += time.Duration(ticks) * clockTick
		}
	}
	return s, nil
}

func allProcs() []procStat {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	procs := make([]procStat, 0, len(dirs))
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil { // it may have exited meanwhile
			procs = append(procs, s)
		}
	}
	return procs
}

// treeCPU is the CPU time the process trees rooted at roots spent so far:
// every live process of the tree with its reaped children, whose time the
// kernel adds to their parent's cutime and cstime when it waits for them.
// So a PostgreSQL backend that ended during a window still counts, through
// the postmaster.
func treeCPU(procs []procStat, roots map[int]bool) time.Duration {
	children := map[int][]procStat{}
	byPid := map[int]procStat{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p)
		byPid[p.pid] = p
	}
	var sum time.Duration
	var walk func(p procStat)
	walk = func(p procStat) {
		sum += p.cpu
		for _, c := range children[p.pid] {
			walk(c)
		}
	}
	for pid := range roots {
		if p, ok := byPid[pid]; ok {
			walk(p)
		}
	}
	return sum
}

// rootsByComm returns the processes named comm whose parent is not also
// named comm: the PostgreSQL postmaster, the RabbitMQ (Erlang) node. The
// whole servers count, whoever else uses them: nothing else should while
// the bench runs.
func rootsByComm(procs []procStat, comm string) map[int]bool {
	names := map[int]string{}
	for _, p := range procs {
		names[p.pid] = p.comm
	}
	roots := map[int]bool{}
	for _, p := range procs {
		if p.comm == comm && names[p.ppid] != comm {
			roots[p.pid] = true
		}
	}
	return roots
}

// machineCPU is the time all CPUs spent busy (not idle or waiting for I/O)
// since boot, from /proc/stat.
func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy time.Duration
	// user nice system idle iowait irq softirq: the time this machine's
	// CPUs ran something (steal, when present, is time they did not).
	for i, v := range f[1:8] {
		if i == 3 || i == 4 {
			continue
		}
		ticks, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += time.Duration(ticks) * clockTick
	}
	return busy, nil
}

// cpuSample is the CPU time each part of the pipeline had spent at one
// moment.
type cpuSample struct {
	orders, invoices, postgres, rabbitmq, loadgen, machine time.Duration
}

// cpuProbe samples the processes of one bench step: the two services (a pid
// of 0 is a service not running), the PostgreSQL and RabbitMQ servers of
// this machine, and the bench process itself, which is the load generator.
type cpuProbe struct {
	orders, invoices int
}

func (p cpuProbe) sample() (cpuSample, error) {
	procs := allProcs()
	var s cpuSample
	one := func(pid int) time.Duration {
		if pid == 0 {
			return 0
		}
		return treeCPU(procs, map[int]bool{pid: true})
	}
	s.orders, s.invoices = one(p.orders), one(p.invoices)
	// The bench process alone: the services are its children.
	self, err := readStat(os.Getpid())
	if err != nil {
		return s, err
	}
	s.loadgen = self.own
	pg, mq := rootsByComm(procs, "postgres"), rootsByComm(procs, "beam.smp")
	if len(pg) == 0 {
		return s, fmt.Errorf("no postgres process found")
	}
	if len(mq) == 0 {
		return s, fmt.Errorf("no beam.smp (RabbitMQ) process found")
	}
	s.postgres, s.rabbitmq = treeCPU(procs, pg), treeCPU(procs, mq)
	s.machine, err = machineCPU()
	return s, err
}

// cpuPerOrder is the CPU time per order that each process spent between two
// samples, in microseconds.
type cpuPerOrder struct {
	Orders   int     `json:"orders"`
	Seconds  float64 `json:"window_s"`
	OrdersUs float64 `json:"orders_us"`
	// InvoicesUs is 0 when the invoices service was not running.
	InvoicesUs float64 `json:"invoices_us"`
	PostgresUs float64 `json:"postgres_us"`
	RabbitMQUs float64 `json:"rabbitmq_us"`
	// PipelineUs is the sum of the four above: what the system itself
	// costs per order.
	PipelineUs float64 `json:"pipeline_us"`
	// LoadgenUs is the bench process, which generates the load.
	LoadgenUs float64 `json:"loadgen_us"`
	// MachineUs is every CPU's busy time, whoever spent it.
	MachineUs float64 `json:"machine_us"`
	// WALBytes is the PostgreSQL WAL written per order (both databases
	// share the cluster's WAL).
	WALBytes float64 `json:"wal_bytes"`
}

func perOrder(before, after cpuSample, orders int, window time.Duration) cpuPerOrder {
	r := cpuPerOrder{Orders: orders, Seconds: window.Seconds()}
	if orders <= 0 {
		return r
	}
	us := func(a, b time.Duration) float64 { return float64(b-a) / float64(time.Microsecond) / float64(orders) }
	r.OrdersUs = us(before.orders, after.orders)
	r.InvoicesUs = us(before.invoices, after.invoices)
	r.PostgresUs = us(before.postgres, after.postgres)
	r.RabbitMQUs = us(before.rabbitmq, after.rabbitmq)
	r.PipelineUs = r.OrdersUs + r.InvoicesUs + r.PostgresUs + r.RabbitMQUs
	r.LoadgenUs = us(before.loadgen, after.loadgen)
	r.MachineUs = us(before.machine, after.machine)
	return r
}

// measure is one measured window: CPU samples and the WAL position at its
// start and end.
type measure struct {
	probe  cpuProbe
	pool   *pgxpool.Pool
	start  time.Time
	before cpuSample
	wal    int64
}

func startMeasure(ctx context.Context, probe cpuProbe, pool *pgxpool.Pool) (*measure, error) {
	m := &measure{probe: probe, pool: pool}
	var err error
	if m.wal, err = walPosition(ctx, pool); err != nil {
		return nil, err
	}
	m.start = time.Now()
	if m.before, err = probe.sample(); err != nil {
		return nil, err
	}
	return m, nil
}

// stop ends the window and returns its figures per order.
func (m *measure) stop(ctx context.Context, orders int) (cpuPerOrder, error) {
	after, err := m.probe.sample()
	if err != nil {
		return cpuPerOrder{}, err
	}
	r := perOrder(m.before, after, orders, time.Since(m.start))
	wal, err := walPosition(ctx, m.pool)
	if err != nil {
		return cpuPerOrder{}, err
	}
	if orders > 0 {
		r.WALBytes = float64(wal-m.wal) / float64(orders)
	}
	return r, nil
}

// walPosition is the cluster's current WAL insert position in bytes.
func walPosition(ctx context.Context, pool *pgxpool.Pool) (pos int64, err error) {
	err = pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint`).Scan(&pos)
	return pos, err
}

// outboxBacklog is the number of events in the outbox not yet published.
func outboxBacklog(ctx context.Context, pool *pgxpool.Pool) (n int64, err error) {
	err = pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n)
	return n, err
}

// waitOutbox waits until the relay has published every event.
func waitOutbox(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := outboxBacklog(ctx, pool)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("outbox still holds %d events after %s", n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuRows prints one step's CPU figures.
func cpuRows(row func(step, figure, format string, v ...any), step string, c cpuPerOrder) {
	if c.Orders == 0 {
		return
	}
	row(step, fmt.Sprintf("CPU per order over %d orders, %.1f s: orders / invoices / PostgreSQL / RabbitMQ", c.Orders, c.Seconds),
		"%.0f / %.0f / %.0f / %.0f µs", c.OrdersUs, c.InvoicesUs, c.PostgresUs, c.RabbitMQUs)
	row(step, "CPU per order: pipeline (those four) / load generator / whole machine", "**%.0f** / %.0f / %.0f µs", c.PipelineUs, c.LoadgenUs, c.MachineUs)
	row(step, "WAL per order", "%.0f bytes", c.WALBytes)
}
