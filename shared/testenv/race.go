//go:build race

package testenv

// raceEnabled makes Binary build the services with the race detector when
// the tests themselves run with -race.
const raceEnabled = true
