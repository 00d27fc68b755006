# frozen_string_literal: true

# Times each storage event of a token request as Omejdn's core fires it
# (PluginLoader.fire with the caller's binding), on whatever storage the plugin
# file configures, at 1, 4 and 8 threads. Prints one JSON object per row: wall
# µs per event (per thread) and the Ruby process's CPU µs per event (what costs
# throughput, as Thin's Ruby process is the bottleneck).
#
# Run from an Omejdn checkout seeded by seed.rb:
#   ruby -I<ruby-jwt>/lib events.rb SECONDS THREADS,...

$stdout.sync = true
require 'jwt'
require 'yaml'
require 'fileutils'
require 'base64'
JWT.configuration.jwk.kid_generator_type = :rfc7638_thumbprint
%w[plugins config keys user client].each { |lib| require File.expand_path("lib/#{lib}", Dir.pwd) }
PluginLoader.initialize

seconds = Float(ARGV[0] || 3)
thread_counts = (ARGV[1] || '1,4,8').split(',').map { |n| Integer(n) }

def client_get(client_id = 'bench_client')
  PluginLoader.fire('CLIENT_GET', binding)
end

def configuration_load(section = 'omejdn', fallback = nil)
  PluginLoader.fire('CONFIGURATION_LOAD', binding)
end

def keys_load(target_type = 'omejdn', target = 'omejdn', create = true)
  PluginLoader.fire('KEYS_LOAD', binding)
end

# The 11 events of one token request, in the core's proportions.
def token_request_events
  client_get
  8.times { configuration_load }
  configuration_load('scope_mapping')
  keys_load
end

EVENTS = {
  'CLIENT_GET' => [method(:client_get), 1],
  'CONFIGURATION_LOAD' => [method(:configuration_load), 1],
  'KEYS_LOAD' => [method(:keys_load), 1],
  'token request (11 events)' => [method(:token_request_events), 11]
}.freeze

def clock(kind)
  Process.clock_gettime(kind)
end

raise 'the bench client is missing: run seed.rb first' if client_get.compact.empty?

EVENTS.each do |name, (call, events)|
  thread_counts.each do |threads|
    call.call # warm: connections, copies
    stop_at = clock(Process::CLOCK_MONOTONIC) + seconds
    wall = clock(Process::CLOCK_MONOTONIC)
    cpu = clock(Process::CLOCK_PROCESS_CPUTIME_ID)
    calls = Array.new(threads) do
      Thread.new do
        n = 0
        while clock(Process::CLOCK_MONOTONIC) < stop_at
          call.call
          n += 1
        end
        n
      end
    end.sum(&:value)
    wall = clock(Process::CLOCK_MONOTONIC) - wall
    cpu = clock(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu
    puts JSON.generate({
                         'event' => name, 'threads' => threads, 'calls' => calls,
                         'per_second' => (calls * events / wall).round(1),
                         'wall_us_per_event' => (wall * 1e6 * threads / (calls * events)).round(1),
                         'cpu_us_per_event' => (cpu * 1e6 / (calls * events)).round(1)
                       })
  end
end
