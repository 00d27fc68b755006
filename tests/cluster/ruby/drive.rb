# frozen_string_literal: true

# Drives the omejdn_pg plugin inside the Omejdn stand-in, for the Python tests.
#
# Reads one JSON command per line on stdin and answers one JSON line on stdout:
#   {"fire": EVENT, "locals": {...}}            one event, as the core fires it
#   {"fire": EVENT, "locals": {...}, "threads": N, "times": K}
#                                               N threads at once, K events each
#   {"fire": EVENT, "locals": {...}, "forked": true}   the event in a forked child
#   {"bench": EVENT, "locals": {...}, "threads": N, "seconds": S}
#                                               events per second and µs per event
# Locals named `user` or `client` are rebuilt as User / Client objects (with
# `backend` from the hash, and `jwks_object: true` turning the client's keys into
# a JWT::JWK::Set object). Answers: {"values": [...], "seconds": s} with Users and
# Clients as {"user": to_h} / {"client": to_h, "backend": b}, or {"error": {...}}.

$stdout.sync = true
require_relative 'omejdn_stand_in'

PluginLoader.initialize_from_env

def object_for(name, value)
  case name
  when 'user'
    User.from_h(value)
  when 'client'
    value = value.dup
    backend = value.delete('backend')
    keys_as_object = value.delete('jwks_object')
    client = Client.from_h(value)
    client.backend = backend
    client.metadata['jwks'] = JWT::JWK::Set.new(client.metadata['jwks']) if keys_as_object
    client
  else
    value
  end
end

def fire(event, locals)
  bind = binding
  locals.each { |name, value| bind.local_variable_set(name.to_sym, object_for(name, value)) }
  PluginLoader.fire(event, bind)
end

def plain(value)
  case value
  when User then { 'user' => value.to_h }
  when Client then { 'client' => value.to_h, 'backend' => value.backend, 'jwks_keys' => key_kinds(value) }
  when Array then value.map { |v| plain(v) }
  else value
  end
end

# Which kind of keys the client's jwks Hash has (the core reads it with symbols).
def key_kinds(client)
  jwks = client.metadata['jwks']
  return nil unless jwks.is_a?(Hash)

  jwks.keys.map { |k| k.class.name }.uniq
end

def error_of(exception)
  { 'class' => exception.class.name, 'message' => exception.message,
    'remote_class' => exception.respond_to?(:remote_class) ? exception.remote_class : nil }
end

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# "{thread}" in a string local becomes the thread's number (distinct users per thread).
def for_thread(value, index)
  case value
  when String then value.gsub('{thread}', index.to_s)
  when Hash then value.transform_values { |v| for_thread(v, index) }
  when Array then value.map { |v| for_thread(v, index) }
  else value
  end
end

def concurrently(command)
  threads = Array.new(command.fetch('threads')) do |index|
    locals = for_thread(command.fetch('locals', {}), index)
    Thread.new do
      Array.new(command.fetch('times', 1)) do
        { 'values' => plain(fire(command['fire'], locals)) }
      rescue StandardError => e
        { 'error' => error_of(e) }
      end
    end
  end
  { 'results' => threads.map(&:value) }
end

def bench(command)
  threads = command.fetch('threads', 1)
  seconds = command.fetch('seconds', 1.0)
  locals = command.fetch('locals', {})
  fire(command['bench'], locals) # warm: the thread's connection and any copies
  stop_at = now + seconds
  started = now
  counts = Array.new(threads) do
    Thread.new do
      fire(command['bench'], locals)
      n = 0
      while now < stop_at
        fire(command['bench'], locals)
        n += 1
      end
      n
    end
  end.map(&:value)
  elapsed = now - started
  calls = counts.sum
  { 'calls' => calls, 'seconds' => elapsed, 'per_second' => calls / elapsed,
    'us_per_event' => elapsed * 1e6 * threads / calls }
end

# The event in a forked child (as a pre-forking server runs handlers), its answer back.
def in_child(command)
  reader, writer = IO.pipe
  pid = fork do
    reader.close
    answer = begin
      { 'values' => plain(fire(command['fire'], command.fetch('locals', {}))) }
    rescue StandardError => e
      { 'error' => error_of(e) }
    end
    writer.write(JSON.generate(answer))
    writer.close
    exit!(0)
  end
  writer.close
  answer = JSON.parse(reader.read)
  Process.wait(pid)
  answer
end

$stdin.each_line do |line|
  command = JSON.parse(line)
  started = now
  answer =
    begin
      if command['bench']
        bench(command)
      elsif command['forked']
        in_child(command)
      elsif command['threads']
        concurrently(command)
      else
        { 'values' => plain(fire(command['fire'], command.fetch('locals', {}))) }
      end
    rescue StandardError => e
      { 'error' => error_of(e) }
    end
  answer['seconds'] = now - started
  puts JSON.generate(answer)
end
