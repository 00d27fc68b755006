# frozen_string_literal: true

# Omejdn's test suite on omejdn_pg: put in place of the checkout's
# tests/config_testsetup.rb (in a scratch copy) by `python -m bench.upstream suite`.
#
# Upstream's set-up registers an in-memory store for configuration and keys and
# writes users and clients straight into it. This one registers no store: Omejdn
# loads the omejdn_pg plugin (all four default stores deactivated), and every
# test's data is written through the core's own calls (Config.base_config=,
# User.add_user, Client.add_client), so it reaches PostgreSQL through the service
# exactly as the server's own writes do. The tests read the configuration as
# `TestDB.config.dig(...)` / `TestDB.config[...]`; here that is a view that
# reads and writes through Config.
#
# OMEJDN_PG_TEST_PLUGINS names our plugin file (socket, deactivate_defaults); the
# test's own plugin file (e.g. admin_api) is merged into it, since Omejdn merges
# plugin files only at the top level.

require 'yaml'
require 'json'

ours = YAML.safe_load(File.read(ENV.fetch('OMEJDN_PG_TEST_PLUGINS'))) || {}
(ENV['OMEJDN_PLUGINS']&.split(':') || []).each do |file|
  theirs = YAML.safe_load(File.read(file)) || {}
  ours['plugins'] = (theirs['plugins'] || {}).merge(ours['plugins'] || {})
  ours.merge!(theirs.except('plugins', 'deactivate_defaults'))
end
# OMEJDN_PG_TEST_KEY_ORDER=1: list the fixtures in the order a store keyed by name
# lists them (clients by client_id, attributes as PostgreSQL's jsonb orders keys:
# shorter first, then bytewise). Several assertions compare a listing with the
# fixture list itself, i.e. assume insertion order. Users keep upstream's order:
# tests address them by index (TestSetup.users[0] is testUser), so the two user
# listings stay a check that only an insertion-ordered store passes.
KEY_ORDER = ENV['OMEJDN_PG_TEST_KEY_ORDER'] == '1'
combined = File.join(Dir.pwd, "tests/.omejdn_pg_plugins_#{Process.pid}.yml")
File.write(combined, ours.to_yaml)
at_exit { File.delete(combined) if File.exist?(combined) }
ENV.clear
ENV['OMEJDN_PLUGINS'] = combined

require_relative '../omejdn'

# The configuration as the tests read it, through the core's storage events.
class TestDB
  # Sections by name: reads and writes go to Config, i.e. to the service.
  class Sections
    def [](section)
      Config.read_config(section)
    end

    def []=(section, data)
      Config.write_config(section, data)
    end

    def dig(section, *path)
      value = self[section]
      path.empty? || value.nil? ? value : value.dig(*path)
    end
  end

  def self.config
    Sections.new
  end
end

# What upstream's TestSetup provides, seeded through the core's calls.
class TestSetup
  def self.setup(config: {}, clients: [], users: [])
    _ = clients, users # upstream ignores these too and always seeds the fixed sets
    base = Config.base_config
    Config.base_config = base.merge(config)
    User.all_users.each { |u| User.delete_user(u.username) }
    Client.all_clients.each { |c| Client.delete_client(c.client_id) }
    TestSetup.users.each { |u| User.add_user(User.from_h(u), u['backend']) }
    TestSetup.clients.each { |c| Client.add_client(Client.from_h(c), 'default') }
  end

  def self.hash_of_mypassword
    '$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC'
  end

  def self.user(name, attributes, hash = hash_of_mypassword)
    { 'username' => name, 'attributes' => ordered(attributes), 'password' => hash, 'backend' => 'yaml' }
  end

  def self.ordered(attributes)
    KEY_ORDER ? attributes.sort_by { |key, _| [key.bytesize, key] }.to_h : attributes
  end

  def self.in_order(list, key)
    KEY_ORDER ? list.sort_by { |item| item[key] } : list
  end

  # The suite's users (its assertions compare with these hashes, so they are the
  # same data as upstream's fixtures, written out here).
  def self.users
    [
      user('testUser', { 'omejdn' => 'write', 'openid' => true, 'profile' => true,
                         'email' => 'admin@example.com', 'asdfasf' => 'asdfasf',
                         'exampleKey' => 'exampleValue' }),
      user('testUser2', { 'omejdn' => 'write' },
           '$2a$12$Be9.8qVsGOVpUFO4ebiMBel/TNetkPhnUkJ8KENHjHLiDG.IXi0Zi'),
      user('dynamic_claims', { 'omejdn' => 'write', 'dynattribute' => { 'dynamic' => true } })
    ]
  end

  def self.client(id, method, extra = {})
    { 'client_id' => id, 'token_endpoint_auth_method' => method,
      'grant_types' => %w[authorization_code client_credentials],
      'scope' => ['omejdn:write'], 'redirect_uris' => 'http://localhost:4200',
      'attributes' => { 'omejdn' => 'write' } }.merge(extra)
  end

  def self.clients
    wide = { 'scope' => ['omejdn:write', 'openid', 'email'] }
    in_order [
      client('client_secret_basic_client', 'client_secret_basic', { 'client_secret' => 'basic_secret' }.merge(wide)),
      client('client_secret_post_client', 'client_secret_post', { 'client_secret' => 'post_secret' }.merge(wide)),
      client('private_key_jwt_client', 'private_key_jwt', wide),
      client('publicClient', 'none'),
      client('resourceClient', 'none', { 'resource' => ['http://example.org', 'http://localhost:4567/api'] }),
      client('dynamic_claims', 'none', { 'client_name' => 'omejdn admin ui',
                                         'attributes' => { 'dynattribute' => { 'dynamic' => true },
                                                           'omejdn' => 'write' } })
    ], 'client_id'
  end
end
